//! Counters of one stack (one worker). Plain integers: a worker owns them and
//! the engine publishes copies; readers sum across workers.

#[derive(Debug, Default, Clone, Copy)]
pub struct StackStats {
    /// The TCP/IP layer's counters (frames in and out, each received
    /// frame's outcome, accepts, sockets).
    pub net: crate::net::NetStats,
    pub active_connections: u64,
    pub requests: u64,
    pub responses_local: u64,
    /// Bearer tokens a listener's JWT provider accepted, and requests it
    /// answered 401 (no token, or an invalid one).
    pub jwt_verified: u64,
    pub jwt_rejected: u64,
    /// Requests refused (400) because their path routes elsewhere once
    /// normalized, on listeners whose token or rules depend on the route.
    pub ambiguous_paths: u64,
    /// Requests a route's canary split sent to the canary pool, and the
    /// canaries whose brake tripped.
    pub canary_requests: u64,
    pub canary_brake_trips: u64,
    /// What the response cache did per request (hit, miss, stale, …).
    pub cache: ferrogate_cache::CacheCounters,
    /// Responses by status class: index 1 = 1xx ... 5 = 5xx.
    pub responses_by_class: [u64; 6],
    pub upstream_connects: u64,
    /// Requests sent over an idle connection from the worker's pool.
    pub upstream_reused: u64,
    /// Idle upstream connections in the worker's pool (a gauge).
    pub upstream_idle: u64,
    /// Connections given to the pool after a response; closed instead
    /// because the endpoint had enough idle or `max_requests` was reached;
    /// closed by the origin (or found with stray bytes) while idle; idle
    /// past the pool's idle timeout.
    pub upstream_pool_released: u64,
    pub upstream_pool_surplus: u64,
    pub upstream_pool_stale: u64,
    pub upstream_pool_expired: u64,
    /// Idle upstream connections closed because their endpoint left
    /// rotation (failed health check, passive ejection).
    pub upstream_pool_evicted: u64,
    pub upstream_errors: u64,
    pub retries: u64,
    pub bad_requests: u64,
    pub client_aborts: u64,
    /// Responses being stored whose HTTP/2 client left while the
    /// connection already read on as many as it may (`MAX_FILLS_PER_CONN`):
    /// aborted instead, so one connection cannot hold many upstreams.
    pub cache_fills_refused: u64,
    /// Background revalidations (`stale-while-revalidate`) started; of
    /// those, refreshed by a 304 (the stored object took it), replaced by
    /// a new response (the store took all of its body), failed (an error,
    /// an uncacheable answer, a 304 that refreshed nothing, a new body
    /// that ended short); and those not started (the worker ran its
    /// maximum, or drained). One a drain or stop ends counts in none of
    /// the three.
    pub cache_background_revalidations: u64,
    pub cache_background_refreshed: u64,
    pub cache_background_replaced: u64,
    pub cache_background_failed: u64,
    pub cache_background_skipped: u64,
    /// Runs of a connection's proxy state machine.
    pub conn_drives: u64,
    /// Connection buffer sets allocated because the worker had none spare
    /// (idle connections hold none; see `Conn::park_bufs`).
    pub conn_buffers_allocated: u64,
    /// TLS handshakes completed without / with session resumption.
    pub tls_handshakes_full: u64,
    pub tls_handshakes_resumed: u64,
    /// Handshakes that failed (bad records, refused client certificate,
    /// timeout, client gone mid-handshake).
    pub tls_handshake_failures: u64,
    /// Established TLS sessions ended by a bad record.
    pub tls_record_errors: u64,
    /// Fatal alerts sent to clients on TLS errors, rustls's own and those
    /// ferrogate adds where rustls queues none (see `TlsSession::fail`).
    pub tls_alerts_sent: u64,
    /// TLS handshakes with an upstream that failed (certificate not
    /// verified, name mismatch, protocol error): answered 502.
    pub upstream_tls_failures: u64,
    /// Access-log records queued, and dropped because the queue was full.
    pub access_log_queued: u64,
    pub access_log_dropped: u64,
    /// Responses the upstream sent before it had the whole request body:
    /// forwarded at once, the rest of the body was not sent.
    pub early_responses: u64,
    /// New connections reset because the worker drains (a graceful stop).
    pub drain_refused: u64,
    /// Client connections still open when a stop could wait no longer
    /// (the drain's bound, or a stop without one): reset.
    pub drain_cut: u64,
    /// proxy-wasm plugins at the viewer phases: calls made, calls that
    /// failed (trap, fuel, memory, ABI, a start that failed), of those the
    /// ones a `fail_open` plugin let through, local answers, instances
    /// started on this worker.
    pub plugin_calls: u64,
    pub plugin_failures: u64,
    pub plugin_failed_open: u64,
    pub plugin_local_responses: u64,
    pub plugin_instances_started: u64,
    /// Idle instances started afresh because their guest heap grew past
    /// half its limit (a heap that only grows starts over).
    pub plugin_instances_recycled: u64,
    /// HTTP contexts started (one per plugin per request) and ended
    /// (`on_done`, `on_log`, `on_delete`): equal once no request is in
    /// flight.
    pub plugin_contexts_created: u64,
    pub plugin_contexts_ended: u64,
    /// Plugins' changes the proxy did not apply: framing fields, `Host`,
    /// pseudo-headers, and the fields the proxy writes itself
    /// (`X-Forwarded-For`, `X-Forwarded-Proto`, identity headers).
    pub plugin_edits_ignored: u64,
    /// Heads with more fields or bytes than a plugin may be handed, answered
    /// without calling one (a request 431, a response 502).
    pub plugin_heads_too_large: u64,
    /// Linear memory of this worker's plugin instances now, in bytes (a
    /// gauge; set by the worker when it publishes).
    pub plugin_memory_bytes: u64,
    /// Header lines a proxy phase tried to add and the codec refused (bad
    /// bytes, a framing field).
    pub header_lines_refused: u64,
    /// Trailer sections handed on (to an HTTP/2 client as trailing
    /// HEADERS, or re-framed in a chunked body), and ones dropped because
    /// they went past 8 KiB or 32 fields (the body still went whole).
    pub trailers_forwarded: u64,
    pub trailers_dropped: u64,
    /// HTTP/2 connections and their protocol counters.
    pub h2: H2Stats,
    /// HTTP/3 listeners: QUIC datagrams, connections, requests.
    pub h3: H3Stats,
    /// TCP (L4) listeners' connections.
    pub l4: L4Stats,
    /// UDP listeners' sessions and datagrams.
    pub udp: UdpStats,
}

/// Counters of a worker's UDP listeners. Every datagram to a UDP listener
/// or to a session's port is forwarded or counted in one `drop_*`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpStats {
    /// Sessions created (a datagram from a new client).
    pub sessions: u64,
    /// Of those, open now (a gauge).
    pub active: u64,
    /// Datagrams and payload bytes client → upstream, upstream → client.
    pub datagrams_up: u64,
    pub datagrams_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Sessions ended because no datagram moved for the idle timeout.
    pub idle_timeouts: u64,
    /// Sessions ended by ICMP port unreachable from their endpoint.
    pub unreachable: u64,
    /// ICMP unreachable about a session port that names another flow
    /// than the session's (stale, or forged): ignored.
    pub unreachable_ignored: u64,
    /// A new client beyond the listener's `max_sessions`.
    pub drop_over_limit: u64,
    /// A new client and no usable endpoint (none healthy, breaker open).
    pub drop_no_upstream: u64,
    /// A new client and no free local port.
    pub drop_no_port: u64,
    /// To a session port from an address other than its endpoint (or to
    /// one whose session just ended).
    pub drop_foreign_source: u64,
    /// To a UDP port whose listener a reload removed (the port stays
    /// open until the engine restarts).
    pub drop_no_listener: u64,
    /// Not sent: the next hop's address unresolved, larger than the MTU,
    /// the transmit queue full.
    pub drop_no_neighbour: u64,
    pub drop_too_big: u64,
    pub drop_tx_full: u64,
}

impl UdpStats {
    fn add(&mut self, o: &UdpStats) {
        for ((_, a), (_, b)) in self.fields_mut().into_iter().zip(o.fields()) {
            *a += b;
        }
    }

    fn fields_mut(&mut self) -> [(&'static str, &mut u64); 17] {
        [
            ("udp_sessions", &mut self.sessions),
            ("udp_active", &mut self.active),
            ("udp_datagrams_up", &mut self.datagrams_up),
            ("udp_datagrams_down", &mut self.datagrams_down),
            ("udp_bytes_up", &mut self.bytes_up),
            ("udp_bytes_down", &mut self.bytes_down),
            ("udp_idle_timeouts", &mut self.idle_timeouts),
            ("udp_unreachable", &mut self.unreachable),
            ("udp_unreachable_ignored", &mut self.unreachable_ignored),
            ("udp_drop_over_limit", &mut self.drop_over_limit),
            ("udp_drop_no_upstream", &mut self.drop_no_upstream),
            ("udp_drop_no_port", &mut self.drop_no_port),
            ("udp_drop_foreign_source", &mut self.drop_foreign_source),
            ("udp_drop_no_listener", &mut self.drop_no_listener),
            ("udp_drop_no_neighbour", &mut self.drop_no_neighbour),
            ("udp_drop_too_big", &mut self.drop_too_big),
            ("udp_drop_tx_full", &mut self.drop_tx_full),
        ]
    }

    fn fields(&self) -> [(&'static str, u64); 17] {
        let mut copy = *self;
        copy.fields_mut().map(|(k, v)| (k, *v))
    }

    /// Counts a datagram the stack could not send.
    pub(crate) fn count_send_drop(&mut self, e: crate::net::SendDrop) {
        use crate::net::SendDrop;
        match e {
            SendDrop::NoNeighbour => self.drop_no_neighbour += 1,
            SendDrop::TooBig => self.drop_too_big += 1,
            // The proxy picks a source of the endpoint's family: no
            // usable local address, like no port.
            SendDrop::AddressFamily => self.drop_no_port += 1,
            SendDrop::QueueFull => self.drop_tx_full += 1,
        }
    }
}

/// Counters of a worker's TCP listeners.
#[derive(Debug, Default, Clone, Copy)]
pub struct L4Stats {
    /// Connections accepted on TCP listeners.
    pub connections: u64,
    /// Of those, open now (a gauge).
    pub active: u64,
    /// Bytes forwarded client → upstream and upstream → client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Upstream connects that failed (refused, timed out, no port); a
    /// retry on another endpoint may follow.
    pub connect_failures: u64,
    /// Connections closed with a RST to the client because no endpoint
    /// could be connected (none healthy, every try failed).
    pub no_upstream: u64,
    /// Connections closed because no byte moved for the idle timeout.
    pub idle_timeouts: u64,
    /// Connections ended by a reset on either side (propagated to the other).
    pub resets: u64,
    /// SYNs reset because the listener had `max_connections` open.
    pub refused_over_limit: u64,
    /// Passthrough listeners: connections reset because what came first was
    /// not a ClientHello (garbage, plain HTTP, over 16 KiB) or did not come
    /// within the idle timeout.
    pub bad_client_hello: u64,
    /// Connections from a trusted load balancer reset because their PROXY
    /// header was missing, malformed, or incomplete within the idle timeout.
    pub bad_proxy_header: u64,
    /// TLS-terminating listeners: handshakes completed; handshakes that
    /// failed (not TLS, a bad record, a refused client certificate, too
    /// slow, the client gone); established sessions ended by a bad record.
    /// Each failure resets the client.
    pub tls_handshakes: u64,
    pub tls_handshake_failed: u64,
    pub tls_record_errors: u64,
    /// Connections reset because they began with a PROXY header from a
    /// source not in the listener's `proxy_protocol_from` (a forged client
    /// address).
    pub untrusted_proxy_header: u64,
}

impl L4Stats {
    fn add(&mut self, o: &L4Stats) {
        self.connections += o.connections;
        self.active += o.active;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
        self.connect_failures += o.connect_failures;
        self.no_upstream += o.no_upstream;
        self.idle_timeouts += o.idle_timeouts;
        self.resets += o.resets;
        self.refused_over_limit += o.refused_over_limit;
        self.bad_client_hello += o.bad_client_hello;
        self.bad_proxy_header += o.bad_proxy_header;
        self.tls_handshakes += o.tls_handshakes;
        self.tls_handshake_failed += o.tls_handshake_failed;
        self.tls_record_errors += o.tls_record_errors;
        self.untrusted_proxy_header += o.untrusted_proxy_header;
    }

    fn fields(&self) -> [(&'static str, u64); 15] {
        [
            ("l4_connections", self.connections),
            ("l4_active", self.active),
            ("l4_bytes_up", self.bytes_up),
            ("l4_bytes_down", self.bytes_down),
            ("l4_connect_failures", self.connect_failures),
            ("l4_no_upstream", self.no_upstream),
            ("l4_idle_timeouts", self.idle_timeouts),
            ("l4_resets", self.resets),
            ("l4_refused_over_limit", self.refused_over_limit),
            ("l4_bad_client_hello", self.bad_client_hello),
            ("l4_bad_proxy_header", self.bad_proxy_header),
            ("l4_tls_handshakes", self.tls_handshakes),
            ("l4_tls_handshake_failed", self.tls_handshake_failed),
            ("l4_tls_record_errors", self.tls_record_errors),
            ("l4_untrusted_proxy_header", self.untrusted_proxy_header),
        ]
    }
}

/// HTTP/2 counters of a worker: its connections' `ConnStats` summed, plus
/// what the proxy counts around them.
#[derive(Debug, Default, Clone, Copy)]
pub struct H2Stats {
    /// Connections that spoke HTTP/2 (ALPN h2 or the h2c preface).
    pub connections: u64,
    /// Requests (streams) that reached the proxy.
    pub requests: u64,
    /// Streams the client reset before their response ended.
    pub client_resets: u64,
    /// Streams reset because the response stalled: the client never
    /// opened its window (or the origin went quiet) for the idle timeout.
    pub stalled_resets: u64,
    pub conn: ferrogate_h2::ConnStats,
}

impl H2Stats {
    fn add(&mut self, o: &H2Stats) {
        self.connections += o.connections;
        self.requests += o.requests;
        self.client_resets += o.client_resets;
        self.stalled_resets += o.stalled_resets;
        self.conn.add(&o.conn);
    }

    fn fields(&self) -> [(&'static str, u64); 16] {
        let c = &self.conn;
        [
            ("h2_connections", self.connections),
            ("h2_requests", self.requests),
            ("h2_client_resets", self.client_resets),
            ("h2_stalled_resets", self.stalled_resets),
            ("h2_frames_received", c.frames_received),
            ("h2_streams_refused", c.streams_refused),
            ("h2_streams_reset_by_peer", c.streams_reset_by_peer),
            ("h2_stream_errors", c.stream_errors),
            ("h2_headers_too_large", c.headers_too_large),
            ("h2_connection_errors", c.connection_errors),
            ("h2_rapid_reset_goaways", c.rapid_reset_goaways),
            ("h2_flood_goaways", c.flood_goaways),
            (
                "h2_continuation_flood_goaways",
                c.continuation_flood_goaways,
            ),
            ("h2_settings_timeouts", c.settings_timeouts),
            ("h2_pings_answered", c.pings_answered),
            ("h2_streams_opened", c.streams_opened),
        ]
    }
}

/// Counters of a worker's HTTP/3 listeners. Every datagram to an HTTP/3
/// port is given to QUIC (which counts its own drops in the endpoint's
/// figures); every datagram QUIC builds is sent or counted as dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct H3Stats {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Built by QUIC and not sent (no next hop, too big for the link);
    /// QUIC's loss recovery sends the data again.
    pub datagrams_dropped: u64,
    /// Handshakes accepted, refused past `max_connections`, and answered
    /// with a Retry (address validation).
    pub connections: u64,
    pub connections_refused: u64,
    /// Refused because their source had `max_connections_per_source`.
    pub connections_refused_per_source: u64,
    pub retries: u64,
    /// Stateless packets sent: Retry, version negotiation, refusals, resets;
    /// and ones dropped because too many were waiting (a flood).
    pub stateless_sent: u64,
    pub stateless_dropped: u64,
    pub requests: u64,
    /// Streams the client reset (or stopped) before their response ended,
    /// and ones reset because the response stalled.
    pub client_resets: u64,
    pub stalled_resets: u64,
    /// Client link-layer addresses forgotten to stay within the table's
    /// bound (a flood of sources); their replies go by the neighbour cache.
    pub mac_evictions: u64,
}

impl H3Stats {
    fn add(&mut self, o: &H3Stats) {
        self.datagrams_received += o.datagrams_received;
        self.datagrams_sent += o.datagrams_sent;
        self.datagrams_dropped += o.datagrams_dropped;
        self.connections += o.connections;
        self.connections_refused += o.connections_refused;
        self.connections_refused_per_source += o.connections_refused_per_source;
        self.retries += o.retries;
        self.stateless_sent += o.stateless_sent;
        self.stateless_dropped += o.stateless_dropped;
        self.requests += o.requests;
        self.client_resets += o.client_resets;
        self.stalled_resets += o.stalled_resets;
        self.mac_evictions += o.mac_evictions;
    }

    fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("h3_datagrams_received", self.datagrams_received),
            ("h3_datagrams_sent", self.datagrams_sent),
            ("h3_datagrams_dropped", self.datagrams_dropped),
            ("h3_connections", self.connections),
            ("h3_connections_refused", self.connections_refused),
            (
                "h3_connections_refused_per_source",
                self.connections_refused_per_source,
            ),
            ("h3_retries", self.retries),
            ("h3_stateless_sent", self.stateless_sent),
            ("h3_stateless_dropped", self.stateless_dropped),
            ("h3_requests", self.requests),
            ("h3_client_resets", self.client_resets),
            ("h3_stalled_resets", self.stalled_resets),
            ("h3_mac_evictions", self.mac_evictions),
        ]
    }
}

impl StackStats {
    pub fn count_status(&mut self, status: u16) {
        let class = (status / 100) as usize;
        if class < self.responses_by_class.len() {
            self.responses_by_class[class] += 1;
        }
    }

    /// Field-wise sum, for totals across workers.
    pub fn add(&mut self, o: &StackStats) {
        self.net.add(&o.net);
        self.active_connections += o.active_connections;
        self.requests += o.requests;
        self.responses_local += o.responses_local;
        self.jwt_verified += o.jwt_verified;
        self.jwt_rejected += o.jwt_rejected;
        self.ambiguous_paths += o.ambiguous_paths;
        self.canary_requests += o.canary_requests;
        self.canary_brake_trips += o.canary_brake_trips;
        self.cache += o.cache;
        for (a, b) in self.responses_by_class.iter_mut().zip(o.responses_by_class) {
            *a += b;
        }
        self.upstream_connects += o.upstream_connects;
        self.upstream_reused += o.upstream_reused;
        self.upstream_idle += o.upstream_idle;
        self.upstream_pool_released += o.upstream_pool_released;
        self.upstream_pool_surplus += o.upstream_pool_surplus;
        self.upstream_pool_stale += o.upstream_pool_stale;
        self.upstream_pool_expired += o.upstream_pool_expired;
        self.upstream_pool_evicted += o.upstream_pool_evicted;
        self.upstream_errors += o.upstream_errors;
        self.retries += o.retries;
        self.bad_requests += o.bad_requests;
        self.client_aborts += o.client_aborts;
        self.cache_fills_refused += o.cache_fills_refused;
        self.cache_background_revalidations += o.cache_background_revalidations;
        self.cache_background_refreshed += o.cache_background_refreshed;
        self.cache_background_replaced += o.cache_background_replaced;
        self.cache_background_failed += o.cache_background_failed;
        self.cache_background_skipped += o.cache_background_skipped;
        self.drain_refused += o.drain_refused;
        self.drain_cut += o.drain_cut;
        self.plugin_calls += o.plugin_calls;
        self.plugin_failures += o.plugin_failures;
        self.plugin_failed_open += o.plugin_failed_open;
        self.plugin_local_responses += o.plugin_local_responses;
        self.plugin_instances_started += o.plugin_instances_started;
        self.plugin_instances_recycled += o.plugin_instances_recycled;
        self.plugin_contexts_created += o.plugin_contexts_created;
        self.plugin_contexts_ended += o.plugin_contexts_ended;
        self.plugin_edits_ignored += o.plugin_edits_ignored;
        self.plugin_heads_too_large += o.plugin_heads_too_large;
        self.plugin_memory_bytes += o.plugin_memory_bytes;
        self.conn_drives += o.conn_drives;
        self.conn_buffers_allocated += o.conn_buffers_allocated;
        self.tls_handshakes_full += o.tls_handshakes_full;
        self.tls_handshakes_resumed += o.tls_handshakes_resumed;
        self.tls_handshake_failures += o.tls_handshake_failures;
        self.tls_record_errors += o.tls_record_errors;
        self.tls_alerts_sent += o.tls_alerts_sent;
        self.upstream_tls_failures += o.upstream_tls_failures;
        self.access_log_queued += o.access_log_queued;
        self.access_log_dropped += o.access_log_dropped;
        self.early_responses += o.early_responses;
        self.header_lines_refused += o.header_lines_refused;
        self.trailers_forwarded += o.trailers_forwarded;
        self.trailers_dropped += o.trailers_dropped;
        self.h2.add(&o.h2);
        self.h3.add(&o.h3);
        self.l4.add(&o.l4);
        self.udp.add(&o.udp);
    }

    /// Name/value pairs in a stable order, for printing and metrics.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.net.fields().to_vec();
        v.extend([
            ("active_connections", self.active_connections),
            ("requests", self.requests),
            ("responses_local", self.responses_local),
            ("jwt_verified", self.jwt_verified),
            ("jwt_rejected", self.jwt_rejected),
            ("ambiguous_paths", self.ambiguous_paths),
            ("canary_requests", self.canary_requests),
            ("canary_brake_trips", self.canary_brake_trips),
            ("responses_2xx", self.responses_by_class[2]),
            ("responses_3xx", self.responses_by_class[3]),
            ("responses_4xx", self.responses_by_class[4]),
            ("responses_5xx", self.responses_by_class[5]),
            ("upstream_connects", self.upstream_connects),
            ("upstream_reused", self.upstream_reused),
            ("upstream_idle", self.upstream_idle),
            ("upstream_pool_released", self.upstream_pool_released),
            ("upstream_pool_surplus", self.upstream_pool_surplus),
            ("upstream_pool_stale", self.upstream_pool_stale),
            ("upstream_pool_expired", self.upstream_pool_expired),
            ("upstream_pool_evicted", self.upstream_pool_evicted),
            ("upstream_errors", self.upstream_errors),
            ("retries", self.retries),
            ("bad_requests", self.bad_requests),
            ("client_aborts", self.client_aborts),
            ("cache_fills_refused", self.cache_fills_refused),
            ("conn_drives", self.conn_drives),
            ("conn_buffers_allocated", self.conn_buffers_allocated),
            ("tls_handshakes_full", self.tls_handshakes_full),
            ("tls_handshakes_resumed", self.tls_handshakes_resumed),
            ("tls_handshake_failures", self.tls_handshake_failures),
            ("tls_record_errors", self.tls_record_errors),
            ("tls_alerts_sent", self.tls_alerts_sent),
            ("upstream_tls_failures", self.upstream_tls_failures),
            ("access_log_queued", self.access_log_queued),
            ("access_log_dropped", self.access_log_dropped),
            ("early_responses", self.early_responses),
            ("drain_refused", self.drain_refused),
            ("drain_cut", self.drain_cut),
            ("plugin_calls", self.plugin_calls),
            ("plugin_failures", self.plugin_failures),
            ("plugin_failed_open", self.plugin_failed_open),
            ("plugin_local_responses", self.plugin_local_responses),
            ("plugin_instances_started", self.plugin_instances_started),
            ("plugin_instances_recycled", self.plugin_instances_recycled),
            ("plugin_contexts_created", self.plugin_contexts_created),
            ("plugin_contexts_ended", self.plugin_contexts_ended),
            ("plugin_edits_ignored", self.plugin_edits_ignored),
            ("plugin_heads_too_large", self.plugin_heads_too_large),
            ("plugin_memory_bytes", self.plugin_memory_bytes),
            ("header_lines_refused", self.header_lines_refused),
            ("trailers_forwarded", self.trailers_forwarded),
            ("trailers_dropped", self.trailers_dropped),
            ("cache_hits", self.cache.hit),
            ("cache_misses", self.cache.miss),
            ("cache_stale", self.cache.stale),
            ("cache_revalidated", self.cache.revalidated),
            ("cache_expired", self.cache.expired),
            ("cache_bypass", self.cache.bypass),
            ("cache_bytes_served", self.cache.bytes_served),
            (
                "cache_background_revalidations",
                self.cache_background_revalidations,
            ),
            (
                "cache_background_refreshed",
                self.cache_background_refreshed,
            ),
            ("cache_background_replaced", self.cache_background_replaced),
            ("cache_background_failed", self.cache_background_failed),
            ("cache_background_skipped", self.cache_background_skipped),
        ]);
        v.extend(self.h2.fields());
        v.extend(self.h3.fields());
        v.extend(self.l4.fields());
        v.extend(self.udp.fields());
        v
    }
}
