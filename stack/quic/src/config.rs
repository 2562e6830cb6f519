//! What one worker's endpoint is built from, and its translation into
//! quinn-proto's configuration.

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::QuicServerConfig;
use quinn_proto::{EndpointConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};

use crate::cid::WorkerCidGenerator;

/// The ALPN token of HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";

/// Limits and switches of one worker's endpoint.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// This worker's index, written into every connection id it issues.
    pub worker: u8,
    /// Answer an Initial without a valid token with a Retry (RFC 9000
    /// §8.1.2), so a spoofed source costs one stateless packet.
    pub retry: bool,
    /// Connections past this are refused (CONNECTION_REFUSED).
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Concurrent request streams per connection (QUIC MAX_STREAMS, bidi).
    pub max_bidi_streams: u32,
    /// Concurrent peer unidirectional streams (control, QPACK, others).
    pub max_uni_streams: u32,
    /// Request body octets buffered per stream before the endpoint stops
    /// reading it (QUIC flow control then holds the client back) until the
    /// application takes them.
    pub max_buffered_body: usize,
    /// Path MTU discovery (RFC 9000 §14.3): only when the UDP path sends
    /// with the don't-fragment bit set, or probes would be fragmented and
    /// look successful.
    pub mtu_discovery: bool,
    pub h3: ferrogate_h3::Config,
}

impl Default for QuicConfig {
    fn default() -> Self {
        let h3 = ferrogate_h3::Config::default();
        Self {
            worker: 0,
            retry: false,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(30),
            max_bidi_streams: h3.max_concurrent_requests as u32,
            max_uni_streams: h3.max_uni_streams as u32,
            max_buffered_body: 64 * 1024,
            mtu_discovery: false,
            h3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// QUIC needs TLS 1.3 with TLS_AES_128_GCM_SHA256 for Initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(#[from] quinn_proto::crypto::rustls::NoInitialCipherSuite),
    #[error("idle timeout too large for QUIC")]
    IdleTimeout,
}

impl QuicConfig {
    /// quinn's endpoint configuration: this worker's connection ids.
    pub(crate) fn endpoint_config(&self) -> EndpointConfig {
        let worker = self.worker;
        let mut config = EndpointConfig::default();
        config.cid_generator(move || Box::new(WorkerCidGenerator::new(worker)));
        config
    }

    /// quinn's transport parameters and limits.
    fn transport_config(&self) -> Result<TransportConfig, ConfigError> {
        let mut transport = TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                IdleTimeout::try_from(self.idle_timeout).map_err(|_| ConfigError::IdleTimeout)?,
            ))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_uni_streams))
            // HTTP/3 here uses no QUIC datagrams: not advertising them
            // keeps peers from making us buffer any.
            .datagram_receive_buffer_size(None);
        Ok(transport)
    }

    /// quinn's server configuration from `tls`: ALPN is set to "h3" and
    /// early data off (0-RTT needs replay protection first).
    pub(crate) fn server_config(
        &self,
        mut tls: rustls::ServerConfig,
    ) -> Result<ServerConfig, ConfigError> {
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        tls.max_early_data_size = 0;
        let crypto = QuicServerConfig::try_from(tls)?;
        let transport = self.transport_config()?;
        let mut config = ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}
