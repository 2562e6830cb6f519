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
    /// The engine's generation (0 or 1), also in every connection id: a
    /// binary upgrade's successor has the other one than its predecessor.
    pub generation: u8,
    /// Answer an Initial without a valid token with a Retry (RFC 9000
    /// §8.1.2), so a spoofed source costs one stateless packet.
    pub retry: bool,
    /// Connections past this are refused (CONNECTION_REFUSED).
    pub max_connections: usize,
    /// Connections at once from one source address; a new one past it is
    /// refused (CONNECTION_REFUSED), so one client cannot take them all.
    pub max_connections_per_source: u32,
    /// Handshakes in progress above which every new connection must
    /// first prove its address with a Retry, as `retry` asks always: a
    /// flood of spoofed Initials then costs one stateless packet each and
    /// no connection state.
    pub retry_above_handshakes: usize,
    pub idle_timeout: Duration,
    /// Concurrent request streams per connection (QUIC MAX_STREAMS, bidi).
    pub max_bidi_streams: u32,
    /// Concurrent peer unidirectional streams (control, QPACK, others).
    pub max_uni_streams: u32,
    /// Request body octets buffered per stream before the endpoint stops
    /// reading it (QUIC flow control then holds the client back) until the
    /// application takes them. It is also the QUIC stream receive window
    /// (at least 16 KiB), what QUIC holds unread on top of it.
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
            generation: 0,
            retry: false,
            max_connections: 10_000,
            max_connections_per_source: 100,
            retry_above_handshakes: 256,
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

/// Most octets one connection may send ahead of what the worker has read,
/// over all its streams.
const MAX_CONNECTION_WINDOW: u64 = 4 << 20;

/// Most response octets one connection keeps unacknowledged (quinn's
/// default is ~10 MB): a client that grants large windows and acknowledges
/// slowly holds this much of the worker's memory, not more.
const SEND_WINDOW: u64 = 1 << 20;

/// Smallest stream window, so a request head of the default size limit
/// arrives in one round trip whatever the body buffer.
const MIN_STREAM_WINDOW: u64 = 16 << 10;

impl QuicConfig {
    /// QUIC receive windows (stream, connection): a stream may send about
    /// its body buffer ahead of the application; a connection no more than
    /// all its streams' windows and at most a few MiB, so one connection
    /// cannot make the worker buffer unbounded data.
    pub(crate) fn receive_windows(&self) -> (u64, u64) {
        let stream = (self.max_buffered_body as u64).max(MIN_STREAM_WINDOW);
        let streams = u64::from(self.max_bidi_streams) + u64::from(self.max_uni_streams);
        let connection = stream
            .saturating_mul(streams.max(1))
            .min(MAX_CONNECTION_WINDOW.max(stream));
        (stream, connection)
    }

    /// quinn's endpoint configuration: this worker's connection ids.
    pub(crate) fn endpoint_config(&self) -> EndpointConfig {
        let (worker, generation) = (self.worker, self.generation);
        let mut config = EndpointConfig::default();
        config.cid_generator(move || Box::new(WorkerCidGenerator::new(worker, generation)));
        config
    }

    /// quinn's transport parameters and limits.
    fn transport_config(&self) -> Result<TransportConfig, ConfigError> {
        let (stream_window, connection_window) = self.receive_windows();
        let mut transport = TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                IdleTimeout::try_from(self.idle_timeout).map_err(|_| ConfigError::IdleTimeout)?,
            ))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_uni_streams))
            .stream_receive_window(varint(stream_window))
            .receive_window(varint(connection_window))
            .send_window(SEND_WINDOW)
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

fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap_or(VarInt::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_windows_follow_the_body_buffer_and_stay_bounded() {
        let config = QuicConfig::default();
        let (stream, connection) = config.receive_windows();
        assert_eq!(stream, config.max_buffered_body as u64);
        assert_eq!(
            connection, MAX_CONNECTION_WINDOW,
            "a few MiB, not unbounded"
        );
        // Few streams: no more than all of their windows.
        let few = QuicConfig {
            max_bidi_streams: 2,
            max_uni_streams: 3,
            ..QuicConfig::default()
        };
        assert_eq!(few.receive_windows(), (stream, 5 * stream));
        // A tiny body buffer still lets a request head through.
        let tiny = QuicConfig {
            max_buffered_body: 1,
            ..QuicConfig::default()
        };
        assert_eq!(tiny.receive_windows().0, MIN_STREAM_WINDOW);
        assert!(config.transport_config().is_ok());
    }
}
