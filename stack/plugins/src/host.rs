//! The host side of the ABI: the state a store carries and the `env`
//! functions the guest imports.
//!
//! Every pointer and length from the guest is checked against its memory;
//! a bad one is an ABI violation that ends the call (a trap the instance
//! counts), never a host panic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use wasmtime::{Caller, Linker, Memory, ResourceLimiter, StoreLimits, TypedFunc};

use crate::abi::{self, Status};
use crate::headers::HeaderList;
use crate::metrics::{MetricCell, MetricKind};
use crate::plugin::PluginShared;
use crate::properties::Properties;
use crate::{LocalResponse, Now};

/// Why the host ended a guest call; found again with `downcast_ref` to
/// classify the failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostAbort {
    #[error("ABI violation: {0}")]
    Abi(String),
    #[error("plugin exited with code {0}")]
    Exit(i32),
    #[error("plugin aborted: {0}")]
    Aborted(String),
}

pub(crate) fn abi_err(msg: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(HostAbort::Abi(msg.into()))
}

/// What a lent header map may grow to: [`crate::MAX_MAP_FIELDS`] and
/// [`crate::MAX_MAP_BYTES`], or what it held when the proxy lent it, if
/// more (the guest may change such a map but not add to it).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MapCap {
    fields: usize,
    bytes: usize,
}

impl MapCap {
    pub(crate) fn of(map: &HeaderList) -> Self {
        Self {
            fields: map.len().max(crate::MAX_MAP_FIELDS),
            bytes: map.bytes().max(crate::MAX_MAP_BYTES),
        }
    }

    /// The cap of a map the guest builds itself (a local answer's).
    fn limits() -> Self {
        Self::of(&HeaderList::new())
    }

    fn admits(&self, (fields, bytes): (usize, usize)) -> bool {
        fields <= self.fields && bytes <= self.bytes
    }
}

/// `StoreLimits` plus a note that a growth was refused, so a trap after it
/// is counted as out-of-memory.
pub(crate) struct Limiter {
    pub(crate) limits: StoreLimits,
    pub(crate) hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.limits.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.hit = true;
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.limits.table_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.hit = true;
        }
        r
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// What the host keeps for one HTTP context.
#[derive(Default)]
pub(crate) struct HttpState {
    pub(crate) props: Properties,
    pub(crate) local: Option<LocalResponse>,
}

/// The data of one store (one instance).
pub(crate) struct Host {
    pub(crate) plugin: Arc<PluginShared>,
    pub(crate) limiter: Limiter,
    pub(crate) memory: Option<Memory>,
    pub(crate) malloc: Option<TypedFunc<u32, u32>>,
    pub(crate) now: Now,
    pub(crate) tick_period_ms: u32,
    /// The context whose callback runs (0: none), and the one host calls act
    /// on (`proxy_set_effective_context`).
    pub(crate) effective: u32,
    /// By id. The host picks the ids (sequential), so a fast fixed hash
    /// is safe here; SipHash was a visible share of a minimal filter's
    /// per-request cost (several lookups per request).
    pub(crate) contexts: HashMap<u32, HttpState, foldhash::fast::FixedState>,
    /// The header map lent for this call, and its type.
    pub(crate) map_type: Option<u32>,
    pub(crate) map: HeaderList,
    /// What `map` may grow to (a call past it answers `BadArgument`).
    pub(crate) map_cap: MapCap,
    /// The body lent for this call, its type, and whether it ends the stream.
    pub(crate) body_type: Option<u32>,
    pub(crate) body: Vec<u8>,
    pub(crate) end_of_stream: bool,
    /// Cells of metrics this instance defined or used, by id.
    pub(crate) metric_cache: Vec<Option<Arc<MetricCell>>>,
    /// The stripe of each metric this instance writes (see `metrics.rs`).
    pub(crate) metric_stripe: usize,
    /// Reused buffer for bytes on their way into guest memory.
    pub(crate) scratch: Vec<u8>,
    /// xorshift state for WASI `random_get` (not cryptographic).
    pub(crate) rng: u64,
}

impl Host {
    pub(crate) fn new(plugin: Arc<PluginShared>, limits: StoreLimits, now: Now, seed: u64) -> Self {
        let metric_stripe = plugin.metrics.take_stripe();
        Self {
            plugin,
            limiter: Limiter { limits, hit: false },
            memory: None,
            malloc: None,
            now,
            tick_period_ms: 0,
            effective: 0,
            contexts: HashMap::default(),
            map_type: None,
            map: HeaderList::new(),
            map_cap: MapCap::default(),
            body_type: None,
            body: Vec::new(),
            end_of_stream: false,
            metric_cache: Vec::new(),
            metric_stripe,
            scratch: Vec::new(),
            rng: seed | 1,
        }
    }

    fn lent_map(&mut self, ty: u32) -> Result<&mut HeaderList, Status> {
        if ty > abi::MAP_MAX {
            Err(Status::BadArgument)
        } else if self.map_type == Some(ty) {
            Ok(&mut self.map)
        } else {
            Err(Status::NotFound)
        }
    }

    fn http_state(&mut self) -> Option<&mut HttpState> {
        self.contexts.get_mut(&self.effective)
    }

    /// The metric `id`, borrowed from this instance's cache: no shared
    /// reference count is touched per update (every worker would write
    /// that one cache line), and an id past the limit never takes the
    /// plugin's lock.
    fn metric(&mut self, id: u32) -> Option<&MetricCell> {
        let i = id as usize;
        if !matches!(self.metric_cache.get(i), Some(Some(_))) {
            if i >= crate::metrics::MAX_METRICS {
                return None;
            }
            let cell = self.plugin.metrics.get(id)?;
            self.cache_metric(id, cell);
        }
        self.metric_cache[i].as_deref()
    }

    fn cache_metric(&mut self, id: u32, cell: Arc<MetricCell>) {
        let i = id as usize;
        if self.metric_cache.len() <= i {
            self.metric_cache.resize(i + 1, None);
        }
        self.metric_cache[i] = Some(cell);
    }
}

type C<'a> = Caller<'a, Host>;
type R = wasmtime::Result<u32>;

fn memory(c: &C<'_>) -> wasmtime::Result<Memory> {
    c.data()
        .memory
        .ok_or_else(|| abi_err("host call before the instance was ready"))
}

/// The guest bytes `ptr..ptr+len`, or an ABI violation.
pub(crate) fn slice(data: &[u8], ptr: u32, len: u32) -> wasmtime::Result<&[u8]> {
    let (p, l) = (ptr as usize, len as usize);
    p.checked_add(l)
        .and_then(|end| data.get(p..end))
        .ok_or_else(|| abi_err(format!("range {ptr:#x}+{len} outside guest memory")))
}

pub(crate) fn write_bytes(data: &mut [u8], ptr: u32, bytes: &[u8]) -> wasmtime::Result<()> {
    let p = ptr as usize;
    let dst = p
        .checked_add(bytes.len())
        .and_then(|end| data.get_mut(p..end))
        .ok_or_else(|| {
            abi_err(format!(
                "write of {} bytes at {ptr:#x} outside guest memory",
                bytes.len()
            ))
        })?;
    dst.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(data: &mut [u8], ptr: u32, v: u32) -> wasmtime::Result<()> {
    write_bytes(data, ptr, &v.to_le_bytes())
}

fn write_u64(data: &mut [u8], ptr: u32, v: u64) -> wasmtime::Result<()> {
    write_bytes(data, ptr, &v.to_le_bytes())
}

/// Copies `scratch` into memory the guest allocates (its `malloc` or
/// `proxy_on_memory_allocate`), and writes the address and size to
/// `ptr_ptr`/`size_ptr`: how every "return bytes" host call answers.
fn return_scratch(c: &mut C<'_>, ptr_ptr: u32, size_ptr: u32) -> R {
    let mem = memory(c)?;
    {
        // Check the out-pointers first: a bad one must not cost a guest
        // allocation.
        let data = mem.data(&*c);
        slice(data, ptr_ptr, 4)?;
        slice(data, size_ptr, 4)?;
    }
    let malloc = c
        .data()
        .malloc
        .clone()
        .ok_or_else(|| abi_err("no allocator export"))?;
    let len = u32::try_from(c.data().scratch.len()).map_err(|_| abi_err("value too large"))?;
    let addr = malloc.call(&mut *c, len)?;
    if addr == 0 && len > 0 {
        return Ok(Status::InvalidMemoryAccess as u32);
    }
    let (data, host) = mem.data_and_store_mut(&mut *c);
    write_bytes(data, addr, &host.scratch)
        .map_err(|_| abi_err(format!("the allocator returned {addr:#x} for {len} bytes")))?;
    write_u32(data, ptr_ptr, addr)?;
    write_u32(data, size_ptr, len)?;
    Ok(Status::Ok as u32)
}

fn ok() -> R {
    Ok(Status::Ok as u32)
}

fn st(s: Status) -> R {
    Ok(s as u32)
}

/// The `env` functions this host implements (the rest of the ABI is in
/// `stubs`). Returns their names, for the import check.
pub(crate) fn define(l: &mut Linker<Host>) -> wasmtime::Result<&'static [&'static str]> {
    const M: &str = "env";

    l.func_wrap(
        M,
        "proxy_log",
        |mut c: C<'_>, level: u32, p: u32, n: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let bytes = slice(data, p, n)?;
            // SDKs log at debug on every context's end whatever the level
            // (proxy-runtime 0.1.8 does): below the level, skip the copy.
            let enabled = match level {
                0 => tracing::enabled!(target: "ferrogate_plugins::guest", tracing::Level::TRACE),
                1 => tracing::enabled!(target: "ferrogate_plugins::guest", tracing::Level::DEBUG),
                2 => tracing::enabled!(target: "ferrogate_plugins::guest", tracing::Level::INFO),
                3 => tracing::enabled!(target: "ferrogate_plugins::guest", tracing::Level::WARN),
                4 | abi::LOG_CRITICAL => true,
                _ => return st(Status::BadArgument),
            };
            if !enabled {
                return ok();
            }
            let msg = String::from_utf8_lossy(bytes);
            let plugin = &*host.plugin.name;
            match level {
                0 => tracing::trace!(target: "ferrogate_plugins::guest", plugin, "{msg}"),
                1 => tracing::debug!(target: "ferrogate_plugins::guest", plugin, "{msg}"),
                2 => tracing::info!(target: "ferrogate_plugins::guest", plugin, "{msg}"),
                3 => tracing::warn!(target: "ferrogate_plugins::guest", plugin, "{msg}"),
                4 | abi::LOG_CRITICAL => {
                    tracing::error!(target: "ferrogate_plugins::guest", plugin, "{msg}")
                }
                _ => return st(Status::BadArgument),
            }
            ok()
        },
    )?;

    l.func_wrap(M, "proxy_get_log_level", |mut c: C<'_>, p: u32| -> R {
        use tracing::level_filters::LevelFilter;
        let level = match LevelFilter::current() {
            LevelFilter::TRACE => 0,
            LevelFilter::DEBUG => 1,
            LevelFilter::INFO => 2,
            LevelFilter::WARN => 3,
            LevelFilter::ERROR => 4,
            _ => abi::LOG_CRITICAL,
        };
        let mem = memory(&c)?;
        write_u32(mem.data_mut(&mut c), p, level)?;
        ok()
    })?;

    l.func_wrap(
        M,
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: u32, msg_ptr_ptr: u32, msg_size_ptr: u32| -> R {
            // No asynchronous calls here, so no status to report but "ok".
            let mem = memory(&c)?;
            write_u32(mem.data_mut(&mut c), code_ptr, 0)?;
            c.data_mut().scratch.clear();
            return_scratch(&mut c, msg_ptr_ptr, msg_size_ptr)
        },
    )?;

    l.func_wrap(
        M,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: u32| -> R {
            c.data_mut().tick_period_ms = ms;
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, p: u32| -> R {
            let now = c.data().now.unix_nanos;
            let mem = memory(&c)?;
            write_u64(mem.data_mut(&mut c), p, now)?;
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_property",
        |mut c: C<'_>, pp: u32, pn: u32, vpp: u32, vsp: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let path = slice(data, pp, pn)?;
            let mut scratch = std::mem::take(&mut host.scratch);
            scratch.clear();
            let found = {
                let req = host
                    .contexts
                    .get(&host.effective)
                    .and_then(|s| s.props.get_path(path));
                match req.or_else(|| host.plugin.props.get_path(path)) {
                    Some(v) => {
                        scratch.extend_from_slice(v);
                        true
                    }
                    None => false,
                }
            };
            host.scratch = scratch;
            if !found {
                return st(Status::NotFound);
            }
            return_scratch(&mut c, vpp, vsp)
        },
    )?;

    l.func_wrap(
        M,
        "proxy_set_property",
        |mut c: C<'_>, pp: u32, pn: u32, vp: u32, vn: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let path = slice(data, pp, pn)?;
            let value = slice(data, vp, vn)?;
            match host.http_state() {
                Some(s) => {
                    s.props.set_path(path, value);
                    ok()
                }
                None => st(Status::NotFound),
            }
        },
    )?;

    // Streams are resumed by the proxy when it calls the next phase; with
    // no asynchronous calls a plugin has nothing to wait for.
    l.func_wrap(M, "proxy_continue_stream", |_c: C<'_>, ty: u32| -> R {
        match ty {
            abi::STREAM_REQUEST | abi::STREAM_RESPONSE => ok(),
            _ => st(Status::BadArgument),
        }
    })?;

    // Routing happens after the viewer-request phase, so there is no cache
    // to clear.
    l.func_wrap(M, "proxy_clear_route_cache", |_c: C<'_>| -> R { ok() })?;

    l.func_wrap(
        M,
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: u32,
         dp: u32,
         dn: u32,
         bp: u32,
         bn: u32,
         hp: u32,
         hn: u32,
         grpc: i32|
         -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let details = slice(data, dp, dn)?.to_vec();
            let body = slice(data, bp, bn)?.to_vec();
            let pairs = abi::deserialize_pairs(slice(data, hp, hn)?)
                .ok_or_else(|| abi_err("malformed header pairs in proxy_send_local_response"))?;
            if !(100..=999).contains(&status) {
                return st(Status::BadArgument);
            }
            let headers = HeaderList::from_pairs(pairs);
            if !MapCap::limits().admits((headers.len(), headers.bytes())) {
                return st(Status::BadArgument);
            }
            let Some(state) = host.http_state() else {
                return st(Status::NotFound);
            };
            state.local = Some(LocalResponse {
                status: status as u16,
                details,
                headers,
                body,
                grpc_status: grpc,
            });
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: u32, kn: u32, vpp: u32, vsp: u32, casp: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let key = slice(data, kp, kn)?;
            let Some((value, cas)) = host.plugin.shared.get(key) else {
                return st(Status::NotFound);
            };
            write_u32(data, casp, cas)?;
            host.scratch.clear();
            host.scratch.extend_from_slice(&value);
            return_scratch(&mut c, vpp, vsp)
        },
    )?;

    l.func_wrap(
        M,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: u32, kn: u32, vp: u32, vn: u32, cas: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let key = slice(data, kp, kn)?;
            let value = slice(data, vp, vn)?;
            match host.plugin.shared.set(key, value, cas) {
                Ok(()) => ok(),
                Err(_) => st(Status::CasMismatch),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_add_header_map_value",
        |mut c: C<'_>, ty: u32, kp: u32, kn: u32, vp: u32, vn: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let (key, value) = (slice(data, kp, kn)?, slice(data, vp, vn)?);
            let cap = host.map_cap;
            match host.lent_map(ty) {
                Ok(map) if !cap.admits(map.size_after_add(key, value)) => st(Status::BadArgument),
                Ok(map) => {
                    map.add(key, value);
                    ok()
                }
                Err(s) => st(s),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, ty: u32, kp: u32, kn: u32, vp: u32, vn: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let (key, value) = (slice(data, kp, kn)?, slice(data, vp, vn)?);
            let cap = host.map_cap;
            match host.lent_map(ty) {
                Ok(map) if !cap.admits(map.size_after_replace(key, value)) => {
                    st(Status::BadArgument)
                }
                Ok(map) => {
                    map.replace(key, value);
                    ok()
                }
                Err(s) => st(s),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, ty: u32, kp: u32, kn: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let key = slice(data, kp, kn)?;
            match host.lent_map(ty) {
                Ok(map) => {
                    map.remove(key);
                    ok()
                }
                Err(s) => st(s),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_header_map_value",
        |mut c: C<'_>, ty: u32, kp: u32, kn: u32, vpp: u32, vsp: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let key = slice(data, kp, kn)?;
            let mut scratch = std::mem::take(&mut host.scratch);
            scratch.clear();
            let found = match host.lent_map(ty) {
                Ok(map) => match map.get(key) {
                    Some(v) => {
                        scratch.extend_from_slice(v);
                        Ok(())
                    }
                    None => Err(Status::NotFound),
                },
                Err(s) => Err(s),
            };
            host.scratch = scratch;
            match found {
                Ok(()) => return_scratch(&mut c, vpp, vsp),
                Err(s) => st(s),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, ty: u32, pp: u32, sp: u32| -> R {
            let host = c.data_mut();
            let mut scratch = std::mem::take(&mut host.scratch);
            let r = host
                .lent_map(ty)
                .map(|map| abi::serialize_pairs(map.pairs(), &mut scratch));
            host.scratch = scratch;
            match r {
                Ok(()) => return_scratch(&mut c, pp, sp),
                Err(s) => st(s),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, ty: u32, p: u32, n: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let pairs = abi::deserialize_pairs(slice(data, p, n)?)
                .ok_or_else(|| abi_err("malformed header pairs in proxy_set_header_map_pairs"))?;
            let cap = host.map_cap;
            let size = (
                pairs.len(),
                pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            );
            match host.lent_map(ty) {
                Ok(_) if !cap.admits(size) => st(Status::BadArgument),
                Ok(map) => {
                    map.set_pairs(pairs);
                    ok()
                }
                Err(s) => st(s),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_header_map_size",
        |mut c: C<'_>, ty: u32, p: u32| -> R {
            let size = match c.data_mut().lent_map(ty) {
                Ok(map) => abi::pairs_size(map.pairs()),
                Err(s) => return st(s),
            };
            let mem = memory(&c)?;
            write_u32(mem.data_mut(&mut c), p, size as u32)?;
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: u32, start: u32, len: u32, pp: u32, sp: u32| -> R {
            let host = c.data_mut();
            let plugin = host.plugin.clone();
            let src: &[u8] = match ty {
                abi::BUFFER_VM_CONFIGURATION => &plugin.vm_configuration,
                abi::BUFFER_PLUGIN_CONFIGURATION => &plugin.configuration,
                t if t > abi::BUFFER_MAX => return st(Status::BadArgument),
                t if host.body_type == Some(t) => &host.body,
                _ => return st(Status::NotFound),
            };
            // proxy-wasm-cpp-host's rules: an overflowing range is a bad
            // argument; past the end reads nothing; an empty read answers
            // (0, 0) — SDKs (AssemblyScript's) rely on the zero size.
            if start.checked_add(len).is_none() {
                return st(Status::BadArgument);
            }
            let start = (start as usize).min(src.len());
            let end = start.saturating_add(len as usize).min(src.len());
            if end == start {
                let mem = memory(&c)?;
                let data = mem.data_mut(&mut c);
                write_u32(data, pp, 0)?;
                write_u32(data, sp, 0)?;
                return ok();
            }
            let mut scratch = std::mem::take(&mut host.scratch);
            scratch.clear();
            scratch.extend_from_slice(&src[start..end]);
            host.scratch = scratch;
            return_scratch(&mut c, pp, sp)
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_buffer_status",
        |mut c: C<'_>, ty: u32, lp: u32, fp: u32| -> R {
            let host = c.data();
            let (len, flags) = match ty {
                abi::BUFFER_VM_CONFIGURATION => (host.plugin.vm_configuration.len(), 0),
                abi::BUFFER_PLUGIN_CONFIGURATION => (host.plugin.configuration.len(), 0),
                t if t > abi::BUFFER_MAX => return st(Status::BadArgument),
                t if host.body_type == Some(t) => (
                    host.body.len(),
                    if host.end_of_stream {
                        abi::BUFFER_FLAG_END_OF_STREAM
                    } else {
                        0
                    },
                ),
                _ => return st(Status::NotFound),
            };
            let mem = memory(&c)?;
            let data = mem.data_mut(&mut c);
            write_u32(data, lp, len as u32)?;
            write_u32(data, fp, flags)?;
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, ty: u32, start: u32, len: u32, dp: u32, dn: u32| -> R {
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let bytes = slice(data, dp, dn)?;
            if ty > abi::BUFFER_MAX {
                return st(Status::BadArgument);
            }
            if host.body_type != Some(ty) {
                // Configuration buffers are read-only; others are absent.
                return st(Status::NotFound);
            }
            let start = start as usize;
            if start > host.body.len() {
                return st(Status::BadArgument);
            }
            // Replaces [start, start+len): (0, len) replaces the whole body,
            // (len, 0) appends, (0, 0) prepends — Envoy's cases and the rest.
            let end = start.saturating_add(len as usize).min(host.body.len());
            // A guest splicing in a loop must not grow host memory past
            // what its sandbox bounds.
            if host.body.len() - (end - start) + bytes.len() > crate::MAX_BODY_BUFFER {
                return st(Status::BadArgument);
            }
            host.body.splice(start..end, bytes.iter().copied());
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_define_metric",
        |mut c: C<'_>, ty: u32, np: u32, nn: u32, idp: u32| -> R {
            let kind = match ty {
                abi::METRIC_COUNTER => MetricKind::Counter,
                abi::METRIC_GAUGE => MetricKind::Gauge,
                abi::METRIC_HISTOGRAM => MetricKind::Histogram,
                _ => return st(Status::BadArgument),
            };
            let mem = memory(&c)?;
            let (data, host) = mem.data_and_store_mut(&mut c);
            let (id, cell) = match host.plugin.metrics.define(kind, slice(data, np, nn)?) {
                Ok(d) => d,
                Err(why) => {
                    host.plugin.stats.metrics_refused.fetch_add(1, Relaxed);
                    tracing::debug!(plugin = %host.plugin.name, ?why, "metric definition refused");
                    return st(Status::BadArgument);
                }
            };
            write_u32(data, idp, id)?;
            host.cache_metric(id, cell);
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_increment_metric",
        |mut c: C<'_>, id: u32, off: i64| -> R {
            let h = c.data_mut();
            let stripe = h.metric_stripe;
            match h.metric(id) {
                Some(cell) if cell.increment(stripe, off) => ok(),
                Some(_) => st(Status::BadArgument),
                None => st(Status::NotFound),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_record_metric",
        |mut c: C<'_>, id: u32, v: u64| -> R {
            let h = c.data_mut();
            let stripe = h.metric_stripe;
            match h.metric(id) {
                Some(cell) => {
                    cell.record(stripe, v);
                    ok()
                }
                None => st(Status::NotFound),
            }
        },
    )?;

    l.func_wrap(
        M,
        "proxy_get_metric",
        |mut c: C<'_>, id: u32, p: u32| -> R {
            let Some(cell) = c.data_mut().metric(id) else {
                return st(Status::NotFound);
            };
            // A gauge may be negative; the ABI's value is a u64 (two's complement).
            let v = cell.get() as u64;
            let mem = memory(&c)?;
            write_u64(mem.data_mut(&mut c), p, v)?;
            ok()
        },
    )?;

    l.func_wrap(
        M,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: u32| -> R {
            let host = c.data_mut();
            if id == abi::ROOT_CONTEXT_ID || host.contexts.contains_key(&id) {
                host.effective = id;
                ok()
            } else {
                st(Status::BadArgument)
            }
        },
    )?;

    Ok(IMPLEMENTED)
}

/// The names `define` gives the linker (kept beside it; a test checks that
/// every one links).
pub(crate) const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_status",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_continue_stream",
    "proxy_clear_route_cache",
    "proxy_send_local_response",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_value",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_set_buffer_bytes",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_set_effective_context",
];
