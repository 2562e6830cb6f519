//! One worker's instance of a plugin, and the calls the proxy makes per
//! request phase.

use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{Store, StoreLimitsBuilder, Trap, TypedFunc};

use crate::Now;
use crate::abi;
use crate::headers::HeaderList;
use crate::host::{Host, HostAbort, HttpState, MapCap};
use crate::plugin::{Plugin, PluginShared};
use crate::properties::Properties;

/// A local answer a plugin asked for (`proxy_send_local_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    /// Response-code details (for the access log).
    pub details: Vec<u8>,
    /// Headers the plugin added to the answer.
    pub headers: HeaderList,
    pub body: Vec<u8>,
    /// The gRPC status the plugin gave (-1: none).
    pub grpc_status: i32,
}

/// What a phase call asks of the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Go on with the (possibly changed) headers or body.
    Continue,
    /// Hold this phase: for a body, keep buffering and call again with the
    /// whole buffered body when more arrives (or at its end); for headers,
    /// hold them until the body phase lets go (proxy-wasm's
    /// StopIteration / StopAllIterationAndBuffer).
    Pause,
    /// Answer the client with this instead of going on.
    LocalResponse(LocalResponse),
    /// The plugin failed this call; the proxy answers 500 or goes on,
    /// per the plugin's `fail_open`.
    Failed(Failure),
}

/// Why a call into the plugin failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {reason}")]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

/// The kinds of [`Failure`]; the first four are counted in
/// [`crate::PluginStats`] and poison the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (or called `proc_exit`/`abort`).
    Trap,
    /// The call used up its fuel.
    Timeout,
    /// The instance hit its memory limit.
    OutOfMemory,
    /// The guest broke the ABI (bad pointer or length, malformed header
    /// pairs, an action value outside the ABI).
    AbiViolation,
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false.
    Rejected,
    /// The context belongs to an instance that failed and was dropped.
    Poisoned,
    /// No such context (deleted, or never created here).
    UnknownContext,
}

/// A handle to one HTTP context (one request) in an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpContextId {
    id: u32,
    generation: u32,
}

impl HttpContextId {
    /// The id the plugin sees.
    pub fn id(&self) -> u32 {
        self.id
    }
}

type Headers3 = TypedFunc<(u32, u32, u32), u32>;
type Trailers2 = TypedFunc<(u32, u32), u32>;

struct Callbacks {
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_tick: Option<TypedFunc<u32, ()>>,
    request_headers: Option<Headers3>,
    request_body: Option<Headers3>,
    request_trailers: Option<Trailers2>,
    response_headers: Option<Headers3>,
    response_body: Option<Headers3>,
    response_trailers: Option<Trailers2>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_delete: Option<TypedFunc<u32, ()>>,
}

/// One worker's instance of a plugin: owns a wasmtime store; `Send`, not
/// shared, not `Sync`.
///
/// After a failure (trap, timeout, out-of-memory, ABI violation) the
/// instance is *poisoned*: its guest state may be half-updated, so its
/// contexts are dropped (calls on them answer [`FailureKind::Poisoned`])
/// and the next [`PluginInstance::create_http_context`] or
/// [`PluginInstance::on_tick`] replaces it with a fresh instance (start,
/// `proxy_on_vm_start`, `proxy_on_configure` again), counted in
/// `reinstantiations`. Shared data and metrics live in the [`Plugin`] and
/// survive.
pub struct PluginInstance {
    plugin: Plugin,
    store: Store<Host>,
    cb: Callbacks,
    poisoned: bool,
    generation: u32,
    next_id: u32,
    tick_base_ms: u64,
}

/// A generation no other instance in the process has used: a context id
/// of a replaced instance (or of this one before it failed) is then never
/// taken for one of a new instance's, though both count ids from 2.
fn next_generation() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn seed() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    N.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

/// Sorts an error from a guest call into a failure and counts it.
fn classify(store: &mut Store<Host>, err: wasmtime::Error, plugin: &PluginShared) -> Failure {
    let oom = std::mem::take(&mut store.data_mut().limiter.hit);
    let s = &plugin.stats;
    let (kind, counter) = if let Some(h) = err.downcast_ref::<HostAbort>() {
        match h {
            HostAbort::Abi(_) => (FailureKind::AbiViolation, &s.abi_errors),
            HostAbort::Exit(_) | HostAbort::Aborted(_) => (FailureKind::Trap, &s.traps),
        }
    } else if matches!(err.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
        (FailureKind::Timeout, &s.timeouts)
    } else if oom {
        (FailureKind::OutOfMemory, &s.out_of_memory)
    } else {
        (FailureKind::Trap, &s.traps)
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let reason = format!("{err:#}");
    // Debug, not warn: a client can make a bad plugin fail on every
    // request; the counters are the signal.
    tracing::debug!(plugin = &*plugin.name, ?kind, %reason, "plugin call failed");
    Failure { kind, reason }
}

fn guarded<T>(
    store: &mut Store<Host>,
    plugin: &PluginShared,
    fuel: u64,
    f: impl FnOnce(&mut Store<Host>) -> wasmtime::Result<T>,
) -> Result<T, Failure> {
    store.data_mut().limiter.hit = false;
    let r = store.set_fuel(fuel).and_then(|()| f(store));
    r.map_err(|e| classify(store, e, plugin))
}

/// Instantiates and starts: `_initialize` (or `_start`), the root context,
/// `proxy_on_vm_start`, `proxy_on_configure`.
fn start(plugin: &Plugin, now: Now) -> Result<(Store<Host>, Callbacks), Failure> {
    let shared = &*plugin.inner;
    let m = &*shared.module.inner;
    let limits = StoreLimitsBuilder::new()
        .memory_size(m.limits.memory_bytes)
        .table_elements(m.limits.table_elements)
        .instances(1)
        .memories(1)
        .tables(4)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        &m.engine,
        Host::new(plugin.inner.clone(), limits, now, seed()),
    );
    store.limiter(|h| &mut h.limiter);
    let fuel = m.limits.fuel_per_start;

    let cb = guarded(&mut store, shared, fuel, |s| {
        let inst = m.pre.instantiate(&mut *s)?;
        // `compile` checked these exports and their types.
        let memory = inst
            .get_memory(&mut *s, "memory")
            .ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
        let malloc = match inst.get_typed_func::<u32, u32>(&mut *s, "malloc") {
            Ok(f) => f,
            Err(_) => inst.get_typed_func::<u32, u32>(&mut *s, "proxy_on_memory_allocate")?,
        };
        s.data_mut().memory = Some(memory);
        s.data_mut().malloc = Some(malloc);
        macro_rules! opt {
            ($name:literal) => {
                inst.get_typed_func(&mut *s, $name).ok()
            };
        }
        let cb = Callbacks {
            on_context_create: inst.get_typed_func(&mut *s, "proxy_on_context_create")?,
            on_tick: opt!("proxy_on_tick"),
            request_headers: opt!("proxy_on_request_headers"),
            request_body: opt!("proxy_on_request_body"),
            request_trailers: opt!("proxy_on_request_trailers"),
            response_headers: opt!("proxy_on_response_headers"),
            response_body: opt!("proxy_on_response_body"),
            response_trailers: opt!("proxy_on_response_trailers"),
            on_done: opt!("proxy_on_done"),
            on_log: opt!("proxy_on_log"),
            on_delete: opt!("proxy_on_delete"),
        };
        let init: Option<TypedFunc<(), ()>> = opt!("_initialize");
        let init = init.or_else(|| opt!("_start"));
        if let Some(f) = init {
            f.call(&mut *s, ())?;
        }
        s.data_mut().effective = abi::ROOT_CONTEXT_ID;
        cb.on_context_create
            .call(&mut *s, (abi::ROOT_CONTEXT_ID, 0))?;
        Ok((cb, opt!("proxy_on_vm_start"), opt!("proxy_on_configure")))
    })?;
    let (cb, vm_start, configure): (Callbacks, Option<Trailers2>, Option<Trailers2>) = cb;
    let root = abi::ROOT_CONTEXT_ID;
    for (f, len, what) in [
        (vm_start, shared.vm_configuration.len(), "proxy_on_vm_start"),
        (configure, shared.configuration.len(), "proxy_on_configure"),
    ] {
        let Some(f) = f else { continue };
        let ok = guarded(&mut store, shared, fuel, |s| f.call(s, (root, len as u32)))?;
        if ok == 0 {
            return Err(Failure {
                kind: FailureKind::Rejected,
                reason: format!("{what} returned false"),
            });
        }
    }
    store.data_mut().effective = 0;
    Ok((store, cb))
}

impl PluginInstance {
    /// Instantiates `plugin` for one worker and starts it (`_initialize` or
    /// `_start`, the root context, `proxy_on_vm_start`,
    /// `proxy_on_configure` with the plugin's configuration). `now` is the
    /// time the guest sees until [`PluginInstance::set_time`].
    pub fn new(plugin: &Plugin, now: Now) -> Result<Self, Failure> {
        let (store, cb) = start(plugin, now)?;
        Ok(Self {
            plugin: plugin.clone(),
            store,
            cb,
            poisoned: false,
            generation: next_generation(),
            next_id: abi::ROOT_CONTEXT_ID + 1,
            tick_base_ms: now.monotonic_ms,
        })
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Whether `ctx` was made by this instance (and has not been lost to a
    /// failure since): of two instances of one plugin, the one to call.
    pub fn owns(&self, ctx: HttpContextId) -> bool {
        ctx.generation == self.generation
    }

    /// Whether the last guest call failed and the instance waits to be
    /// replaced.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The guest's linear memory now, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }

    /// Sets the time the guest reads (`proxy_get_current_time_nanoseconds`,
    /// WASI clocks); call it once per batch.
    pub fn set_time(&mut self, now: Now) {
        self.store.data_mut().now = now;
    }

    fn fuel(&self) -> u64 {
        self.plugin.inner.module.inner.limits.fuel_per_call
    }

    fn poison(&mut self) {
        self.poisoned = true;
        self.generation = next_generation();
        self.store.data_mut().contexts.clear();
    }

    /// Runs `f` against the store with a fresh fuel budget; a failure
    /// poisons the instance.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&Callbacks, &mut Store<Host>) -> wasmtime::Result<T>,
    ) -> Result<T, Failure> {
        let fuel = self.fuel();
        let cb = &self.cb;
        let r = guarded(&mut self.store, &self.plugin.inner, fuel, |s| f(cb, s));
        if r.is_err() {
            self.poison();
        }
        r
    }

    /// Replaces a poisoned instance with a fresh one.
    fn ensure_live(&mut self) -> Result<(), Failure> {
        if !self.poisoned {
            return Ok(());
        }
        let now = self.store.data().now;
        let (store, cb) = start(&self.plugin, now)?;
        self.store = store;
        self.cb = cb;
        self.poisoned = false;
        self.tick_base_ms = now.monotonic_ms;
        self.plugin
            .inner
            .stats
            .reinstantiations
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a request: a new HTTP context with the request's
    /// properties (the proxy may add to them later with
    /// [`PluginInstance::properties_mut`]). Replaces a poisoned instance
    /// first.
    pub fn create_http_context(&mut self, props: Properties) -> Result<HttpContextId, Failure> {
        self.ensure_live()?;
        let host = self.store.data_mut();
        let mut id = self.next_id;
        while id <= abi::ROOT_CONTEXT_ID || host.contexts.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        host.contexts.insert(id, HttpState { props, local: None });
        host.effective = id;
        let r = self.call(|cb, s| cb.on_context_create.call(s, (id, abi::ROOT_CONTEXT_ID)));
        self.store.data_mut().effective = 0;
        r?;
        Ok(HttpContextId {
            id,
            generation: self.generation,
        })
    }

    /// The request's properties, to fill in as the request moves on (route
    /// name, upstream, response code).
    pub fn properties_mut(&mut self, ctx: HttpContextId) -> Option<&mut Properties> {
        if ctx.generation != self.generation {
            return None;
        }
        self.store
            .data_mut()
            .contexts
            .get_mut(&ctx.id)
            .map(|s| &mut s.props)
    }

    fn check(&self, ctx: HttpContextId) -> Result<(), Failure> {
        if ctx.generation != self.generation {
            return Err(Failure {
                kind: FailureKind::Poisoned,
                reason: "the instance failed after this request started".into(),
            });
        }
        if !self.store.data().contexts.contains_key(&ctx.id) {
            return Err(Failure {
                kind: FailureKind::UnknownContext,
                reason: format!("no context {}", ctx.id),
            });
        }
        Ok(())
    }

    /// Viewer request (before routing) and origin request (after the
    /// upstream is chosen): `proxy_on_request_headers`.
    pub fn on_request_headers(
        &mut self,
        ctx: HttpContextId,
        headers: &mut HeaderList,
        end_of_stream: bool,
    ) -> Outcome {
        self.headers_phase(
            ctx,
            |cb| cb.request_headers.as_ref(),
            abi::MAP_REQUEST_HEADERS,
            headers,
            end_of_stream,
        )
    }

    /// `proxy_on_request_body` with the body buffered so far (the plugin
    /// may replace any part of it).
    pub fn on_request_body(
        &mut self,
        ctx: HttpContextId,
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Outcome {
        self.body_phase(
            ctx,
            |cb| cb.request_body.as_ref(),
            abi::BUFFER_HTTP_REQUEST_BODY,
            body,
            end_of_stream,
        )
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(
        &mut self,
        ctx: HttpContextId,
        trailers: &mut HeaderList,
    ) -> Outcome {
        self.trailers_phase(
            ctx,
            |cb| cb.request_trailers.as_ref(),
            abi::MAP_REQUEST_TRAILERS,
            trailers,
        )
    }

    /// Origin response: `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        ctx: HttpContextId,
        headers: &mut HeaderList,
        end_of_stream: bool,
    ) -> Outcome {
        self.headers_phase(
            ctx,
            |cb| cb.response_headers.as_ref(),
            abi::MAP_RESPONSE_HEADERS,
            headers,
            end_of_stream,
        )
    }

    /// Whether the module exports `proxy_on_request_body`: the proxy then
    /// streams the request body through it.
    pub fn has_request_body_phase(&self) -> bool {
        self.cb.request_body.is_some()
    }

    /// Whether the module exports `proxy_on_response_body`: the proxy then
    /// streams the response body through it (and re-frames it, since the
    /// plugin may change its length).
    pub fn has_response_body_phase(&self) -> bool {
        self.cb.response_body.is_some()
    }

    /// Whether the module exports `proxy_on_request_trailers`.
    pub fn has_request_trailers_phase(&self) -> bool {
        self.cb.request_trailers.is_some()
    }

    /// Whether the module exports `proxy_on_response_trailers`.
    pub fn has_response_trailers_phase(&self) -> bool {
        self.cb.response_trailers.is_some()
    }

    /// `proxy_on_response_body` with the body buffered so far.
    pub fn on_response_body(
        &mut self,
        ctx: HttpContextId,
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Outcome {
        self.body_phase(
            ctx,
            |cb| cb.response_body.as_ref(),
            abi::BUFFER_HTTP_RESPONSE_BODY,
            body,
            end_of_stream,
        )
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(
        &mut self,
        ctx: HttpContextId,
        trailers: &mut HeaderList,
    ) -> Outcome {
        self.trailers_phase(
            ctx,
            |cb| cb.response_trailers.as_ref(),
            abi::MAP_RESPONSE_TRAILERS,
            trailers,
        )
    }

    fn headers_phase(
        &mut self,
        ctx: HttpContextId,
        f: fn(&Callbacks) -> Option<&Headers3>,
        ty: u32,
        list: &mut HeaderList,
        eos: bool,
    ) -> Outcome {
        if let Err(e) = self.check(ctx) {
            return Outcome::Failed(e);
        }
        if f(&self.cb).is_none() {
            return Outcome::Continue;
        }
        let n = list.len() as u32;
        let r = self.with_map(ctx, ty, list, |cb, s| match f(cb) {
            Some(f) => f.call(s, (ctx.id, n, eos as u32)),
            None => Ok(0),
        });
        self.outcome(ctx, r, abi::ACTION_MAX_HEADERS, true)
    }

    fn trailers_phase(
        &mut self,
        ctx: HttpContextId,
        f: fn(&Callbacks) -> Option<&Trailers2>,
        ty: u32,
        list: &mut HeaderList,
    ) -> Outcome {
        if let Err(e) = self.check(ctx) {
            return Outcome::Failed(e);
        }
        if f(&self.cb).is_none() {
            return Outcome::Continue;
        }
        let n = list.len() as u32;
        let r = self.with_map(ctx, ty, list, |cb, s| match f(cb) {
            Some(f) => f.call(s, (ctx.id, n)),
            None => Ok(0),
        });
        // FilterTrailersStatus: 0 Continue, 1 StopIteration.
        self.outcome(ctx, r, 1, false)
    }

    /// Lends `list` to the host functions for one call (a move, no copy).
    fn with_map(
        &mut self,
        ctx: HttpContextId,
        ty: u32,
        list: &mut HeaderList,
        f: impl FnOnce(&Callbacks, &mut Store<Host>) -> wasmtime::Result<u32>,
    ) -> Result<u32, Failure> {
        let host = self.store.data_mut();
        std::mem::swap(&mut host.map, list);
        host.map_cap = MapCap::of(&host.map);
        host.map_type = Some(ty);
        host.effective = ctx.id;
        let r = self.call(f);
        let host = self.store.data_mut();
        std::mem::swap(&mut host.map, list);
        host.map_type = None;
        host.effective = 0;
        r
    }

    fn body_phase(
        &mut self,
        ctx: HttpContextId,
        f: fn(&Callbacks) -> Option<&Headers3>,
        ty: u32,
        body: &mut Vec<u8>,
        eos: bool,
    ) -> Outcome {
        if let Err(e) = self.check(ctx) {
            return Outcome::Failed(e);
        }
        if f(&self.cb).is_none() {
            return Outcome::Continue;
        }
        let host = self.store.data_mut();
        std::mem::swap(&mut host.body, body);
        host.body_type = Some(ty);
        host.end_of_stream = eos;
        host.effective = ctx.id;
        let n = host.body.len() as u32;
        let r = self.call(|cb, s| match f(cb) {
            Some(f) => f.call(s, (ctx.id, n, eos as u32)),
            None => Ok(0),
        });
        let host = self.store.data_mut();
        std::mem::swap(&mut host.body, body);
        host.body_type = None;
        host.effective = 0;
        self.outcome(ctx, r, abi::ACTION_MAX_BODY, false)
    }

    fn outcome(
        &mut self,
        ctx: HttpContextId,
        r: Result<u32, Failure>,
        max: u32,
        headers: bool,
    ) -> Outcome {
        let action = match r {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e),
        };
        let local = self
            .store
            .data_mut()
            .contexts
            .get_mut(&ctx.id)
            .and_then(|s| s.local.take());
        if let Some(local) = local {
            return Outcome::LocalResponse(local);
        }
        match action {
            abi::ACTION_CONTINUE => Outcome::Continue,
            // Headers: "continue, but the stream ends here" — the proxy
            // drops the body; treated as Continue for now.
            abi::ACTION_CONTINUE_AND_END_STREAM if headers => Outcome::Continue,
            a if a <= max => Outcome::Pause,
            a => {
                self.plugin
                    .inner
                    .stats
                    .abi_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.poison();
                Outcome::Failed(Failure {
                    kind: FailureKind::AbiViolation,
                    reason: format!("callback returned action {a}, outside the ABI"),
                })
            }
        }
    }

    /// `proxy_on_done` (the stream is complete).
    pub fn on_done(&mut self, ctx: HttpContextId) -> Result<(), Failure> {
        self.check(ctx)?;
        if self.cb.on_done.is_some() {
            self.store.data_mut().effective = ctx.id;
            let r = self.call(|cb, s| match &cb.on_done {
                Some(f) => f.call(s, ctx.id).map(drop),
                None => Ok(()),
            });
            self.store.data_mut().effective = 0;
            r?;
        }
        Ok(())
    }

    /// `proxy_on_log` (access-log time, after the viewer response).
    pub fn on_log(&mut self, ctx: HttpContextId) -> Result<(), Failure> {
        self.check(ctx)?;
        if self.cb.on_log.is_some() {
            self.store.data_mut().effective = ctx.id;
            let r = self.call(|cb, s| match &cb.on_log {
                Some(f) => f.call(s, ctx.id).map(drop),
                None => Ok(()),
            });
            self.store.data_mut().effective = 0;
            r?;
        }
        Ok(())
    }

    /// `proxy_on_delete`, and forgets the context. Call it once for every
    /// context created, also after failures (it is then only bookkeeping).
    pub fn delete_context(&mut self, ctx: HttpContextId) -> Result<(), Failure> {
        if self.check(ctx).is_err() {
            return Ok(());
        }
        let r = if self.cb.on_delete.is_some() {
            self.store.data_mut().effective = ctx.id;
            let r = self.call(|cb, s| match &cb.on_delete {
                Some(f) => f.call(s, ctx.id),
                None => Ok(()),
            });
            self.store.data_mut().effective = 0;
            r
        } else {
            Ok(())
        };
        self.store.data_mut().contexts.remove(&ctx.id);
        r
    }

    /// The end of a request in Envoy's order: `on_done`, `on_log`,
    /// `delete_context`. The first failure is returned; the context is
    /// gone either way.
    pub fn finish(&mut self, ctx: HttpContextId) -> Result<(), Failure> {
        let r = self.on_done(ctx).and_then(|()| self.on_log(ctx));
        let d = self.delete_context(ctx);
        r.and(d)
    }

    /// How many HTTP contexts are open.
    pub fn open_contexts(&self) -> usize {
        self.store.data().contexts.len()
    }

    /// When the next tick is due (monotonic milliseconds), if the plugin
    /// asked for ticks (`proxy_set_tick_period_milliseconds`).
    pub fn next_tick(&self) -> Option<u64> {
        let period = self.store.data().tick_period_ms;
        (period > 0).then(|| self.tick_base_ms.saturating_add(period as u64))
    }

    /// Whether a tick is due at `now`.
    pub fn tick_due(&self, now: Now) -> bool {
        self.next_tick().is_some_and(|t| now.monotonic_ms >= t)
    }

    /// Calls `proxy_on_tick` on the root context (replacing a poisoned
    /// instance first) and starts the next period from `now`.
    pub fn on_tick(&mut self, now: Now) -> Result<(), Failure> {
        self.set_time(now);
        self.ensure_live()?;
        self.tick_base_ms = now.monotonic_ms;
        if self.cb.on_tick.is_some() {
            self.store.data_mut().effective = abi::ROOT_CONTEXT_ID;
            let r = self.call(|cb, s| match &cb.on_tick {
                Some(f) => f.call(s, abi::ROOT_CONTEXT_ID).map(drop),
                None => Ok(()),
            });
            self.store.data_mut().effective = 0;
            r?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin.name())
            .field("poisoned", &self.poisoned)
            .field("open_contexts", &self.open_contexts())
            .finish()
    }
}
