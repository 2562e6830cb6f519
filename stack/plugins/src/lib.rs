//! proxy-wasm plugins on wasmtime: a sans-IO host for ABI 0.2.1 (and
//! 0.2.0, which the AssemblyScript SDK declares) that the proxy calls per
//! request phase.
//!
//! The crate opens no socket and reads no clock: the proxy passes the time
//! in ([`Now`]) and calls it from its HTTP/1 and HTTP/2 state machines.
//!
//! # Use
//!
//! 1. When a snapshot is built (off the data path):
//!    [`PluginModule::compile`] the `.wasm` with [`PluginLimits`] — this
//!    checks the exports (`proxy_abi_version_0_2_{0,1}`, `memory`,
//!    `proxy_on_context_create`, `malloc` or `proxy_on_memory_allocate`),
//!    the callback types and every import — then [`Plugin::new`] with a
//!    [`PluginConfig`] (name, root id, configuration bytes). A trial
//!    [`PluginInstance::new`] there catches a plugin that rejects its
//!    configuration before any worker sees it.
//! 2. Each worker: [`PluginInstance::new`] (its own store, memory limit,
//!    `_initialize`/`_start`, `proxy_on_vm_start`, `proxy_on_configure`).
//! 3. Each request: [`PluginInstance::create_http_context`] with the
//!    request's [`Properties`], then the phase calls, each answering an
//!    [`Outcome`] (`Continue`, `Pause`, `LocalResponse`, `Failed`), then
//!    [`PluginInstance::finish`] (`on_done`, `on_log`, `on_delete`).
//! 4. Timers: [`PluginInstance::next_tick`] for the worker's `poll_at`,
//!    [`PluginInstance::on_tick`] when due.
//! 5. The engine reads [`Plugin::metrics`] (`(name, kind, value)`) and
//!    [`Plugin::stats`] (traps, timeouts, out-of-memory, ABI errors,
//!    re-instantiations).
//!
//! # The proxy's four phases
//!
//! The calls are the same at every phase; where the proxy makes them
//! decides the phase. The CDN's four hooks map onto proxy-wasm's request
//! and response callbacks by where a plugin is attached (proposal for the
//! config: `phase = "viewer"` (default) or `"origin"`), each attachment
//! with its own HTTP context per request:
//!
//! | proxy phase | when the proxy calls | callbacks |
//! |---|---|---|
//! | viewer request | request head parsed, **before routing** (and before a cache lookup) | `on_request_headers`, then `on_request_body`/`on_request_trailers` as the body arrives |
//! | origin request | **after the upstream is chosen**, only when the origin is contacted (a cache miss); `route_name`, `cluster_name`, `upstream.address` filled via [`PluginInstance::properties_mut`] | `on_request_headers`/`_body`/`_trailers` of origin-attached plugins |
//! | origin response | the origin's response head and body, before the cache stores them | `on_response_headers`/`_body`/`_trailers` of origin-attached plugins |
//! | viewer response | **before the client write** (also for cache hits and local answers) | `on_response_headers`/`_body`/`_trailers` of viewer-attached plugins, then [`PluginInstance::finish`] (`on_done`, `on_log`, `on_delete`) after the last byte |
//! | on launch | a snapshot loads the plugin | [`PluginInstance::new`] per worker: `_initialize`/`_start`, `on_vm_start`, `on_configure` |
//!
//! A `Pause` on headers holds the head until the body phase continues; a
//! `Pause` on a body keeps buffering: the proxy calls the body callback
//! again with the whole buffered body (Envoy's `StopIterationAndBuffer`).
//! A `LocalResponse` replaces the rest of the exchange. A `Failed` answers
//! 500, or passes through under the plugin's `fail_open`.
//!
//! # Properties
//!
//! The proxy fills, per request, as far as it knows them: `request.path`,
//! `request.method`, `request.host`, `request.scheme`, `request.protocol`,
//! `request.id`, `source.address`, `source.port`, `destination.address`,
//! `destination.port`, `route_name`, `cluster_name`, `upstream.address`,
//! `response.code`. The host adds `plugin_name`, `plugin_root_id`,
//! `plugin_vm_id`. Integers are 8-byte little-endian, as in Envoy.
//!
//! # The sandbox
//!
//! - **Fuel** per call ([`PluginLimits::fuel_per_call`], and
//!   `fuel_per_start` for the start): deterministic and needs no timer
//!   thread (see `module.rs` for why not epochs). Out of fuel →
//!   [`FailureKind::Timeout`].
//! - **Memory**: a wasmtime `StoreLimits` per instance; a `memory.grow`
//!   past [`PluginLimits::memory_bytes`] traps → `OutOfMemory`.
//! - **ABI checks**: every guest pointer and length is bounds-checked,
//!   header pairs are parsed strictly, callback results must be ABI
//!   actions; a violation ends the call → `AbiViolation`.
//! - **Header map limits** ([`MAX_MAP_FIELDS`], [`MAX_MAP_BYTES`], or the
//!   size the map had when lent, if more): a change that would grow a map
//!   past them answers `BadArgument` and the call goes on — one request's
//!   headers never poison the instance the other requests' contexts live
//!   in. The proxy refuses a head past them before any call.
//! - A trap, timeout, out-of-memory or ABI violation is counted and
//!   **poisons** the instance; the next request re-instantiates it (see
//!   [`PluginInstance`]). Nothing the guest does panics the host.
//! - Guest code runs on the calling thread with wasmtime's default 512 KiB
//!   wasm stack limit: call from threads with at least 2 MiB of stack.
//!
//! # Implemented host functions
//!
//! Logging (`proxy_log` into `tracing`, target `ferrogate_plugins::guest`,
//! field `plugin`; `proxy_get_log_level`), `proxy_get_status`, ticks and
//! time, properties (get/set), header maps (get, add, replace, remove,
//! get/set pairs, size) for the phase's map, body buffers (get, status,
//! set — any range; `(0, len)` replaces the body), the configuration
//! buffers, `proxy_send_local_response`, shared data with CAS, metrics
//! (define, increment, record, get; at most [`MAX_METRICS`] per plugin,
//! written per instance without contention and summed on read),
//! `proxy_continue_stream`,
//! `proxy_clear_route_cache` (no-ops: nothing waits, routing comes later),
//! `proxy_set_effective_context`.
//!
//! # Left out (for now)
//!
//! - `proxy_http_call`/`dispatch_http_call`, gRPC calls and streams, shared
//!   queues, foreign functions, `proxy_close_stream`, `proxy_done`: the
//!   imports link and answer `Unimplemented` (12) — the stub list is in
//!   `stubs.rs`, with the few WASI functions SDK runtimes import.
//! - A header map is readable only in its own phase (request headers are
//!   not visible from response callbacks: use properties).
//! - On `Failed` the lent headers/body may hold the plugin's partial
//!   changes.
//! - TCP (network) filters, metadata callbacks, `ContinueAndEndStream`
//!   (treated as Continue).
//! - Proactive recycling: an instance is replaced only after a failure.
//!   A guest whose heap creeps up per request hits the memory limit and
//!   fails that one call (counted as out-of-memory) before it is replaced;
//!   the AssemblyScript 0.17 + proxy-runtime 0.1.8 header adder does this
//!   after about a million requests under the default 32 MiB. Recycling an
//!   idle instance above a memory mark, or after N requests, would avoid
//!   the failed call.

mod abi;
mod headers;
mod host;
mod instance;
mod metrics;
mod module;
mod plugin;
mod properties;
mod shared_data;
mod stubs;

/// The most a body buffer may grow to inside one call
/// (`proxy_set_buffer_bytes` past it answers BadArgument): the host's
/// copy lives outside the sandbox's memory limit.
pub const MAX_BODY_BUFFER: usize = 4 << 20;

pub use abi::Status;
pub use headers::{HeaderList, MAX_MAP_BYTES, MAX_MAP_FIELDS};
pub use instance::{Failure, FailureKind, HttpContextId, LocalResponse, Outcome, PluginInstance};
pub use metrics::{MAX_METRIC_NAME, MAX_METRICS, MetricKind, MetricSample, PluginStats};
pub use module::{CompileError, PluginLimits, PluginModule};
pub use plugin::{Plugin, PluginConfig};
pub use properties::Properties;
pub use shared_data::{CasMismatch, SharedData};

/// The time the guest sees, passed in by the proxy (the crate reads no
/// clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// A monotonic clock in milliseconds (ticks).
    pub monotonic_ms: u64,
    /// Wall-clock time in nanoseconds since the Unix epoch
    /// (`proxy_get_current_time_nanoseconds`).
    pub unix_nanos: u64,
}
