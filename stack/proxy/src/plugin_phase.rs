//! proxy-wasm plugins (`ferrogate-plugins`) at the request phases, on
//! HTTP/1 and HTTP/2 alike:
//!
//! | phase | plugins | when |
//! |---|---|---|
//! | viewer request | the listener's, in order | the request head, before routing |
//! | origin request | the route's, in order | once the route (and its pool) is chosen, on the head as the listener's left it |
//! | origin response | the route's, in reverse | the origin's response head as it arrives |
//! | viewer response | the listener's, in reverse | then, before the client write |
//!
//! A request's contexts are kept in the order they were made (listener's,
//! then route's), so one reverse walk at the response head is both
//! response phases. Answers the proxy makes itself (errors, local
//! answers) skip the response phases. A cache hit's stored head goes
//! through both, as the miss's did: the plugins' edits are applied at the
//! client write, never stored. (The route's plugins run before the cache
//! lookup; a request any plugin changed bypasses the cache.)
//!
//! What a plugin changes in a head becomes edits the existing header
//! writers apply (names to leave out, lines to add; [`PluginEdits`], kept in
//! the request's [`crate::rules::Rewrites`]), so the codec stays the only
//! writer of framing fields: a plugin cannot remove or set
//! `Content-Length`, `Transfer-Encoding`, `Connection` and the other fields
//! the codec owns ([`CODEC_OWNED`]), nor pseudo-headers.
//!
//! Per worker, one instance per plugin ([`WorkerPlugins`]); a failed
//! instance is replaced by the plugin crate at its next request. A call
//! that fails answers 500 (`plugin_failed`), or goes on when the plugin is
//! attached with `fail_open`; both are counted.
//!
//! Ticks (`proxy_set_tick_period_milliseconds`) run from the worker's poll,
//! on its clock, per instance.
//!
//! Request and response bodies go through `proxy_on_request_body` and
//! `proxy_on_response_body` (`body`). Left out for now (the plugin crate
//! has the calls): trailers.

mod body;

use std::sync::Arc;

use ferrogate_plugins::{
    FailureKind, HeaderList, HttpContextId, Now, Outcome, Plugin, PluginInstance, Properties,
};

use crate::error::ProxyError;
use crate::http::{CODEC_OWNED, HeadError, HeaderLines};
use crate::net::Instant;
use crate::phases::RequestInfo;
use crate::route::{DirectResponse, Route, RouteAction, RouteTable};
use crate::stats::StackStats;

pub use body::MAX_HELD;
pub(crate) use body::{ResponseBody, wants_request_body, wants_response_body, wants_trailers};

/// A plugin on a listener or a route.
#[derive(Debug, Clone)]
pub struct AttachedPlugin {
    pub plugin: Plugin,
    /// A failed call lets the request go on instead of answering 500.
    pub fail_open: bool,
}

/// Contexts one instance may hold open at once (requests in flight on the
/// worker): past it a new request's call fails (counted; `fail_open`
/// decides) rather than growing the guest without bound. An instance is
/// never replaced while it holds live contexts: their ids would be taken
/// by the new one's.
const MAX_OPEN_CONTEXTS: usize = 4096;

/// The largest body a plugin's local answer may carry: it is copied per
/// request (the HTTP/1 answer must also fit the head buffer, or it is a
/// 500).
pub(crate) const MAX_LOCAL_BODY: usize = 64 * 1024;

/// The most header bytes a head's plugins may add: more would crowd out
/// the head buffer, and a head that then does not fit is the plugin's
/// failure, not the origin's or the client's.
const MAX_ADDED_BYTES: usize = 8 * 1024;

/// A worker's plugin instances, one per plugin of its snapshot, and the
/// instances of plugins a newer snapshot dropped that still hold contexts.
#[derive(Default)]
pub(crate) struct WorkerPlugins {
    instances: Vec<PluginInstance>,
    /// Kept until their last context ends (then dropped at a finish or a
    /// sync): a reload does not cut the requests in flight.
    retiring: Vec<PluginInstance>,
}

impl WorkerPlugins {
    fn position(&self, plugin: &Plugin) -> Option<usize> {
        self.instances
            .iter()
            .position(|i| i.plugin().ptr_eq(plugin))
    }

    /// The instance that made `ctx` (a context of `plugin`): the current
    /// one, or one retiring since a reload. By the context, not the plugin
    /// alone: the plugin may have a current instance as well as the one
    /// holding the context. None: the context was lost to a failure.
    fn holder(&mut self, plugin: &Plugin, ctx: HttpContextId) -> Option<&mut PluginInstance> {
        self.instances
            .iter_mut()
            .chain(self.retiring.iter_mut())
            .find(|i| i.plugin().ptr_eq(plugin) && i.owns(ctx))
    }

    /// Brings back a retiring instance of `plugin` (a reload took it off
    /// and a later one put it back while it still held contexts): a second
    /// instance would leave those contexts to one that never ends them.
    fn revive(&mut self, plugin: &Plugin) -> Option<usize> {
        let k = self
            .retiring
            .iter()
            .position(|i| i.plugin().ptr_eq(plugin))?;
        self.instances.push(self.retiring.swap_remove(k));
        Some(self.instances.len() - 1)
    }

    /// The worker's instance of `plugin`, made on first use.
    fn instance(
        &mut self,
        plugin: &Plugin,
        now: Now,
        stats: &mut StackStats,
    ) -> Result<&mut PluginInstance, String> {
        let i = match self.position(plugin).or_else(|| self.revive(plugin)) {
            Some(i) => i,
            None => {
                self.instances
                    .push(PluginInstance::new(plugin, now).map_err(|e| e.to_string())?);
                stats.plugin_instances_started += 1;
                self.instances.len() - 1
            }
        };
        // An idle instance whose guest heap grew past half its limit
        // starts over (on_vm_start, on_configure): the AssemblyScript
        // runtime's heap creeps with every request and never shrinks. A
        // fresh one that cannot start leaves the old one serving.
        let idle = &self.instances[i];
        if idle.open_contexts() == 0
            && idle.memory_bytes() > plugin.memory_limit() / 2
            && let Ok(fresh) = PluginInstance::new(plugin, now)
        {
            self.instances[i] = fresh;
            stats.plugin_instances_started += 1;
            stats.plugin_instances_recycled += 1;
        }
        let inst = &mut self.instances[i];
        if inst.open_contexts() >= MAX_OPEN_CONTEXTS {
            return Err(format!(
                "{MAX_OPEN_CONTEXTS} requests in flight already hold a context"
            ));
        }
        inst.set_time(now);
        Ok(inst)
    }

    /// When the next plugin tick is due (`proxy_set_tick_period_milliseconds`).
    pub(crate) fn next_tick(&self) -> Option<Instant> {
        self.instances
            .iter()
            .filter_map(PluginInstance::next_tick)
            .min()
            .map(|ms| Instant::from_millis(ms.min(i64::MAX as u64) as i64))
    }

    /// Calls `proxy_on_tick` on every instance whose period is up. A failed
    /// tick is counted; the instance is replaced at its next use (the
    /// plugin crate's rule), the worker goes on.
    pub(crate) fn tick(&mut self, now: Instant, stats: &mut StackStats) {
        let guest = guest_now(now);
        for inst in &mut self.instances {
            if inst.tick_due(guest) {
                stats.plugin_calls += 1;
                if let Err(e) = inst.on_tick(guest) {
                    stats.plugin_failures += 1;
                    tracing::debug!(plugin = inst.plugin().name(), error = %e, "plugin tick failed");
                }
            }
        }
    }

    /// Keeps the instances of the plugins `routes` uses (on listeners and
    /// routes), starts the ones it adds (off the request path: a snapshot
    /// swap); the rest retire once their requests in flight end.
    pub(crate) fn sync(&mut self, routes: &RouteTable, now: Instant, stats: &mut StackStats) {
        let attached = || {
            routes.listeners().iter().flat_map(|l| {
                let on_routes = l.routes().iter().flat_map(|r| r.plugins.iter());
                l.plugins().iter().chain(on_routes).map(|a| &a.plugin)
            })
        };
        let mut k = 0;
        while k < self.instances.len() {
            if attached().any(|p| p.ptr_eq(self.instances[k].plugin())) {
                k += 1;
            } else {
                let old = self.instances.swap_remove(k);
                if old.open_contexts() > 0 {
                    self.retiring.push(old);
                }
            }
        }
        self.retiring.retain(|i| i.open_contexts() > 0);
        let now = guest_now(now);
        let plugins: Vec<Plugin> = attached().cloned().collect();
        for p in &plugins {
            if self.position(p).is_none()
                && self.revive(p).is_none()
                && let Err(e) = self.instance(p, now, stats)
            {
                stats.plugin_failures += 1;
                tracing::warn!(plugin = p.name(), error = %e, "plugin did not start on this worker");
            }
        }
    }

    /// Linear memory of every instance (current and retiring), in bytes.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.instances
            .iter()
            .chain(&self.retiring)
            .map(PluginInstance::memory_bytes)
            .sum()
    }

    /// Contexts open in every instance (current and retiring).
    #[cfg(test)]
    pub(crate) fn open_contexts(&self) -> usize {
        self.instances
            .iter()
            .chain(&self.retiring)
            .map(PluginInstance::open_contexts)
            .sum()
    }
}

/// The time the guest sees.
fn guest_now(now: Instant) -> Now {
    let unix_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Now {
        monotonic_ms: now.total_millis().max(0) as u64,
        unix_nanos,
    }
}

/// What a request's plugins changed, and their open contexts.
#[derive(Debug, Default)]
pub struct PluginEdits {
    contexts: Vec<(Plugin, HttpContextId)>,
    request_strip: Vec<String>,
    request_add: Vec<(String, Vec<u8>)>,
    response_strip: Vec<String>,
    response_add: Vec<(String, Vec<u8>)>,
    /// Which attachment each context belongs to (fail_open per context).
    fail_open: Vec<bool>,
    /// The request head as the plugins so far left it: the route's
    /// plugins (origin request) go on from the listener's.
    request_now: Option<HeaderList>,
    /// Edits to proxy-owned fields the earlier phase already counted.
    request_ignored: u64,
    /// A request phase removed the client's `content-length`: the request
    /// body is re-framed (chunked) to the upstream.
    request_unframed: bool,
    /// A response phase removed the origin's `content-length` (proxy-wasm's
    /// way of saying a body plugin will change the length): the body is
    /// re-framed; otherwise the length stands and the plugins must keep it.
    response_unframed: bool,
}

impl PluginEdits {
    /// The header edits (not the contexts: [`finish`] ends those).
    pub fn clear_edits(&mut self) {
        self.request_now = None;
        self.request_ignored = 0;
        self.request_strip.clear();
        self.request_add.clear();
        self.response_strip.clear();
        self.response_add.clear();
        self.response_unframed = false;
    }

    /// The response head's edits: a retried request's next response goes
    /// through the response phase afresh.
    pub fn clear_response_edits(&mut self) {
        self.response_strip.clear();
        self.response_add.clear();
        self.response_unframed = false;
    }

    /// Whether a request phase removed the client's `content-length`.
    pub fn request_unframed(&self) -> bool {
        self.request_unframed
    }

    /// Whether a response phase removed the origin's `content-length`.
    pub fn response_unframed(&self) -> bool {
        self.response_unframed
    }

    pub fn strips_request(&self, name: &str) -> bool {
        self.request_strip
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn strips_response(&self, name: &str) -> bool {
        self.response_strip
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn add_request(&self, lines: &mut HeaderLines<'_>) {
        for (n, v) in &self.request_add {
            lines.add(n, v);
        }
    }

    pub fn add_response(&self, lines: &mut HeaderLines<'_>) {
        for (n, v) in &self.response_add {
            lines.add(n, v);
        }
    }

    /// Whether the upstream request differs from the client's (the cache
    /// then treats it as diverted).
    pub fn changes_request(&self) -> bool {
        !self.request_strip.is_empty() || !self.request_add.is_empty()
    }

    /// Whether plugins add lines to the request head: a head that then
    /// does not fit is their failure.
    pub fn adds_request(&self) -> bool {
        !self.request_add.is_empty()
    }

    /// Whether plugins add lines to the response head (see
    /// [`PluginEdits::adds_request`]).
    pub fn adds_response(&self) -> bool {
        !self.response_add.is_empty()
    }
}

/// What a request phase (viewer or origin) decided.
pub(crate) enum ViewerVerdict {
    Continue,
    Respond(Arc<DirectResponse>),
    Fail,
    /// The head has more fields or bytes than a plugin may be handed
    /// ([`ferrogate_plugins::MAX_MAP_FIELDS`], `MAX_MAP_BYTES`): the
    /// client's doing (431), no plugin was called.
    TooLarge,
}

/// The request's properties for the guest (with the route's and its
/// pool's names at the origin request phase).
fn request_properties(info: &RequestInfo<'_>, protocol: &str, route: Option<&Route>) -> Properties {
    let mut p = Properties::new();
    let path = info.target;
    p.set("request.path", path)
        .set("request.url_path", path.split('?').next().unwrap_or(path))
        .set("request.method", info.view.method)
        .set("request.host", info.view.host.unwrap_or(""))
        .set("request.scheme", if info.https { "https" } else { "http" })
        .set("request.protocol", protocol)
        .set("request.id", info.request_id)
        .set("source.address", info.client_ip.to_string())
        .set_u64("destination.port", u64::from(info.listener_port));
    if let Some(r) = route {
        p.set("route_name", r.name.as_str());
        if let RouteAction::Proxy(pool) = &r.action {
            p.set("cluster_name", pool.name.as_str());
        }
    }
    p
}

/// The request head as a proxy-wasm header map (pseudo-headers first, as
/// Envoy gives them).
fn request_map(info: &RequestInfo<'_>) -> HeaderList {
    let mut h = HeaderList::new();
    h.add(b":method", info.view.method.as_bytes());
    h.add(b":path", info.target.as_bytes());
    h.add(b":authority", info.view.host.unwrap_or("").as_bytes());
    h.add(b":scheme", if info.https { b"https" } else { b"http" });
    for f in info.view.headers.iter() {
        h.add(f.name.as_bytes(), f.value);
    }
    h
}

/// A plugin's local answer as the proxy sends it; Err: why it cannot be.
fn local_answer(
    r: ferrogate_plugins::LocalResponse,
    edits: &mut PluginEdits,
) -> Result<Arc<DirectResponse>, String> {
    if r.body.len() > MAX_LOCAL_BODY {
        return Err(format!(
            "a local answer of {} bytes (at most {MAX_LOCAL_BODY})",
            r.body.len()
        ));
    }
    // The content type and every line go through the codec's checked
    // writer (`write_local_response`): one with CR, LF or NUL is refused
    // and counted there.
    let content_type = r
        .headers
        .get(b"content-type")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "text/plain".into());
    edits.response_add.clear();
    edits.response_strip.clear();
    let mut added = 0;
    for (n, v) in r.headers.pairs() {
        let name = String::from_utf8_lossy(n);
        if !name.eq_ignore_ascii_case("content-type") && !name.starts_with(':') {
            added += n.len() + v.len() + 4;
            edits.response_add.push((name.into_owned(), v.to_vec()));
        }
    }
    // As for edits (`diff`): the lines must fit beside the head.
    if added > MAX_ADDED_BYTES {
        edits.response_add.clear();
        return Err(format!(
            "a local answer with {added} bytes of fields (at most {MAX_ADDED_BYTES})"
        ));
    }
    let status = if (200..=599).contains(&r.status) {
        r.status
    } else {
        500
    };
    Ok(Arc::new(DirectResponse {
        status,
        content_type,
        body: r.body,
        location: None,
        retry_after: None,
        www_authenticate: None,
    }))
}

/// Ends one context now (`on_done`, `on_log`, `on_delete`): counted, and a
/// failure of those calls too (a context the instance lost when it failed
/// is only bookkeeping: that failure was counted when it happened).
fn end_context(
    workers: &mut WorkerPlugins,
    plugin: &Plugin,
    ctx: HttpContextId,
    stats: &mut StackStats,
) {
    stats.plugin_contexts_ended += 1;
    let Some(inst) = workers.holder(plugin, ctx) else {
        return;
    };
    if let Err(f) = inst.finish(ctx)
        && !stale(f.kind)
    {
        stats.plugin_failures += 1;
        tracing::debug!(plugin = plugin.name(), error = %f, "plugin failed ending a request");
    }
}

/// The context is gone with the instance that failed (or was never this
/// instance's): the request's plugin cannot see the rest of it.
fn stale(kind: FailureKind) -> bool {
    matches!(kind, FailureKind::Poisoned | FailureKind::UnknownContext)
}

/// A request head's plugin phase: the listener's plugins before routing
/// (viewer request, `route` None) or the chosen route's (origin request,
/// on the head as the listener's plugins left it). Runs `plugins` in
/// order; what all of them changed so far goes to `edits`, their contexts
/// stay open for the response.
///
/// A call fails on a trap, fuel, memory or ABI error, a start that failed,
/// a `Pause` (no body phase yet holds the head), or a local answer too
/// large to send. A `fail_open` plugin's failure undoes what that call
/// changed and ends its context; any other ends the request (500).
#[allow(clippy::too_many_arguments)]
pub(crate) fn request_phase(
    workers: &mut WorkerPlugins,
    plugins: &[AttachedPlugin],
    info: &RequestInfo<'_>,
    route: Option<&Route>,
    protocol: &str,
    end_of_stream: bool,
    edits: &mut PluginEdits,
    stats: &mut StackStats,
) -> ViewerVerdict {
    if route.is_none() {
        // A new request: nothing carries over from the last one's head.
        edits.request_now = None;
        edits.request_ignored = 0;
        edits.request_unframed = false;
    }
    if plugins.is_empty() {
        return ViewerVerdict::Continue;
    }
    let now = guest_now(info.now);
    let before = request_map(info);
    // Checked before any guest sees it: an HTTP/2 head may carry more
    // fields than a map may hold, and a plugin must not be the one to
    // find out (nor the instance the other requests' contexts live in).
    if !before.within_limits() {
        stats.plugin_heads_too_large += 1;
        return ViewerVerdict::TooLarge;
    }
    let phase = if route.is_some() {
        "origin request"
    } else {
        "viewer request"
    };
    let mut headers = edits.request_now.take().unwrap_or_else(|| before.clone());
    // What the earlier phases made of the head, and their edits: kept
    // should this phase's plugins together fail the limits below.
    let start = route.is_some().then(|| headers.clone());
    for a in plugins {
        stats.plugin_calls += 1;
        // What to go back to should the call fail and the plugin let the
        // request through.
        let saved = a.fail_open.then(|| headers.clone());
        let mut created = None;
        let outcome = match workers.instance(&a.plugin, now, stats) {
            Ok(inst) => match inst.create_http_context(request_properties(info, protocol, route)) {
                Ok(ctx) => {
                    stats.plugin_contexts_created += 1;
                    edits.contexts.push((a.plugin.clone(), ctx));
                    edits.fail_open.push(a.fail_open);
                    created = Some(ctx);
                    inst.on_request_headers(ctx, &mut headers, end_of_stream)
                }
                Err(e) => Outcome::Failed(e),
            },
            Err(reason) => {
                tracing::debug!(plugin = a.plugin.name(), %reason, "no context for the request");
                stats.plugin_failures += 1;
                if !a.fail_open {
                    return ViewerVerdict::Fail;
                }
                stats.plugin_failed_open += 1;
                continue;
            }
        };
        let failure = match outcome {
            Outcome::Continue => None,
            Outcome::Pause => Some("paused the request head (no body phase holds it)".into()),
            Outcome::LocalResponse(r) => match local_answer(r, edits) {
                Ok(answer) => {
                    stats.plugin_local_responses += 1;
                    return ViewerVerdict::Respond(answer);
                }
                Err(reason) => Some(reason),
            },
            Outcome::Failed(e) => Some(e.to_string()),
        };
        let Some(reason) = failure else { continue };
        stats.plugin_failures += 1;
        tracing::debug!(plugin = a.plugin.name(), %reason, phase, "plugin call failed");
        if !a.fail_open {
            return ViewerVerdict::Fail;
        }
        stats.plugin_failed_open += 1;
        headers = saved.unwrap_or(headers);
        if let Some(ctx) = created {
            // It failed this request: it does not see the response.
            edits.contexts.pop();
            edits.fail_open.pop();
            end_context(workers, &a.plugin, ctx, stats);
        }
    }
    let owned = |n: &[u8]| {
        std::str::from_utf8(n).is_ok_and(|n| crate::phases::strips_proxy_owned_header(info, n))
    };
    let fail_closed = plugins.iter().any(|a| !a.fail_open);
    // The edits say what every phase so far changed from the client's head.
    let mut strip = Vec::new();
    let mut add = Vec::new();
    // Every phase so far, as `headers` carries their edits on.
    edits.request_unframed =
        before.get(b"content-length").is_some() && headers.get(b"content-length").is_none();
    match diff(&before, &headers, owned, &mut strip, &mut add) {
        Ok(ignored) => {
            // Counted once per request, not again at the origin phase.
            stats.plugin_edits_ignored += ignored.saturating_sub(edits.request_ignored);
            edits.request_ignored = ignored;
            edits.request_strip = strip;
            edits.request_add = add;
            edits.request_now = Some(headers);
        }
        Err(reason) => {
            // Nothing of this phase goes upstream; what the earlier phase
            // made of the head stays (a listener plugin's strip of a
            // client's field must hold when the route's fail open).
            if start.is_none() {
                edits.request_strip.clear();
                edits.request_add.clear();
            }
            edits.request_now = start;
            stats.plugin_failures += 1;
            tracing::debug!(%reason, phase, "plugins' request head refused");
            if fail_closed {
                return ViewerVerdict::Fail;
            }
            stats.plugin_failed_open += 1;
        }
    }
    ViewerVerdict::Continue
}

/// Origin response, then viewer response: runs the request's plugins (in
/// reverse, as Envoy runs response filters: the route's, then the
/// listener's) on the response head in `head` (an HTTP/1 head as the
/// origin sent it); their changes go to `edits`. Err: what the client gets
/// instead — `PluginFailed` (500) when a call failed and its plugin is not
/// `fail_open`, a bad response (502) when the origin's head has more than
/// a plugin may be handed (no plugin is called). A context the instance
/// lost since the request's head (another request made it fail) is a
/// failure too: the plugin cannot see this response.
pub(crate) fn viewer_response(
    workers: &mut WorkerPlugins,
    head: &[u8],
    now: Instant,
    edits: &mut PluginEdits,
    stats: &mut StackStats,
) -> Result<(), ProxyError> {
    edits.response_unframed = false;
    if edits.contexts.is_empty() {
        return Ok(());
    }
    let mut fields = Vec::new();
    let Some(code) = crate::http::head::response_fields(head, &mut fields) else {
        return Ok(());
    };
    let mut before = HeaderList::new();
    before.add(b":status", code.to_string().as_bytes());
    for (n, v) in &fields {
        before.add(n, v);
    }
    if !before.within_limits() {
        stats.plugin_heads_too_large += 1;
        return Err(ProxyError::BadResponse(HeadError::TooManyHeaders));
    }
    let mut headers = before.clone();
    let now = guest_now(now);
    for i in (0..edits.contexts.len()).rev() {
        let (plugin, ctx) = &edits.contexts[i];
        let fail_open = edits.fail_open[i];
        stats.plugin_calls += 1;
        let saved = fail_open.then(|| headers.clone());
        let outcome = match workers.holder(plugin, *ctx) {
            Some(inst) => {
                inst.set_time(now);
                if let Some(p) = inst.properties_mut(*ctx) {
                    p.set_u64("response.code", u64::from(code));
                }
                inst.on_response_headers(*ctx, &mut headers, false)
            }
            None => Outcome::Failed(ferrogate_plugins::Failure {
                kind: FailureKind::UnknownContext,
                reason: "the context was lost to a failure of its instance".into(),
            }),
        };
        let reason = match outcome {
            Outcome::Continue => continue,
            Outcome::Pause => "paused the response head (no body phase holds it)".to_string(),
            // A local answer once the origin's is here: not supported at
            // this phase.
            Outcome::LocalResponse(_) => "a local answer at the response phase".to_string(),
            Outcome::Failed(f) => f.to_string(),
        };
        stats.plugin_failures += 1;
        tracing::debug!(plugin = plugin.name(), %reason, "plugin call failed at the response head");
        if !fail_open {
            return Err(ProxyError::PluginFailed);
        }
        stats.plugin_failed_open += 1;
        headers = saved.unwrap_or(headers);
    }
    let fail_closed = edits.fail_open.iter().any(|f| !f);
    edits.response_unframed =
        before.get(b"content-length").is_some() && headers.get(b"content-length").is_none();
    match diff(
        &before,
        &headers,
        |_| false,
        &mut edits.response_strip,
        &mut edits.response_add,
    ) {
        Ok(ignored) => stats.plugin_edits_ignored += ignored,
        Err(reason) => {
            edits.response_strip.clear();
            edits.response_add.clear();
            stats.plugin_failures += 1;
            tracing::debug!(%reason, "plugins' response head refused");
            if fail_closed {
                return Err(ProxyError::PluginFailed);
            }
            stats.plugin_failed_open += 1;
        }
    }
    Ok(())
}

/// Ends the request's contexts (`on_done`, `on_log`, `on_delete`). Every
/// way a request ends comes through here (the response head, a local
/// answer, an error, a cached answer, a reset, the connection's end), so
/// contexts created equal contexts ended.
pub(crate) fn finish(workers: &mut WorkerPlugins, edits: &mut PluginEdits, stats: &mut StackStats) {
    if edits.contexts.is_empty() {
        return;
    }
    for (plugin, ctx) in std::mem::take(&mut edits.contexts) {
        end_context(workers, &plugin, ctx, stats);
    }
    edits.fail_open.clear();
    workers.retiring.retain(|i| i.open_contexts() > 0);
}

/// What turned `before` into `after`, as fields to leave out and lines to
/// add: every field whose values changed is replaced as a whole. Framing
/// fields, `Host` and pseudo-headers are the codec's and what `owned` says
/// the proxy writes itself: changes to them are ignored (Ok: how many).
/// Err: a list past the plugin crate's limits, or more added bytes than
/// [`MAX_ADDED_BYTES`].
///
/// Sorted by name, not compared pairwise: a list is bounded, but a guest
/// should not be able to make the proxy's work quadratic in it.
fn diff(
    before: &HeaderList,
    after: &HeaderList,
    owned: impl Fn(&[u8]) -> bool,
    strip: &mut Vec<String>,
    add: &mut Vec<(String, Vec<u8>)>,
) -> Result<u64, String> {
    if !before.within_limits() || !after.within_limits() {
        return Err(format!(
            "a header map past {} fields or {} bytes",
            ferrogate_plugins::MAX_MAP_FIELDS,
            ferrogate_plugins::MAX_MAP_BYTES
        ));
    }
    let codec = |n: &[u8]| {
        n.first() == Some(&b':')
            || CODEC_OWNED
                .iter()
                .any(|f| f.as_bytes().eq_ignore_ascii_case(n))
    };
    let mut ignored = 0;
    let mut added = 0;
    // What plugins mostly do: nothing, or add one field of a new name
    // (the general way below allocates a key per field and sorts).
    let kept = before.len().min(after.len());
    if after.len() <= before.len() + 1
        && before.len() <= after.len()
        && (0..kept).all(|i| before.field(i) == after.field(i))
    {
        if after.len() == before.len() {
            return Ok(0);
        }
        let (name, v) = after.field(kept);
        if before.get(name).is_none() {
            if codec(name) || owned(name) {
                return Ok(1);
            }
            added = name.len() + v.len() + 4;
            if added <= MAX_ADDED_BYTES {
                add.push((String::from_utf8_lossy(name).into_owned(), v.to_vec()));
                return Ok(0);
            }
            strip.clear();
            add.clear();
            return Err(format!(
                "plugins add {added} header bytes (at most {MAX_ADDED_BYTES})"
            ));
        }
    }
    // (lowercased name, 0 before / 1 after, index): each name's fields
    // together, before's first, each side in order.
    let mut keys: Vec<(Vec<u8>, u8, usize)> = Vec::with_capacity(before.len() + after.len());
    for (side, list) in [(0u8, before), (1, after)] {
        keys.extend(
            list.pairs()
                .enumerate()
                .map(|(i, (n, _))| (n.to_ascii_lowercase(), side, i)),
        );
    }
    keys.sort_unstable();
    let value = |side: u8, i: usize| {
        if side == 0 {
            before.field(i)
        } else {
            after.field(i)
        }
    };
    for group in keys.chunk_by(|a, b| a.0 == b.0) {
        let was = group.iter().filter(|k| k.1 == 0).map(|k| value(0, k.2).1);
        let now = group.iter().filter(|k| k.1 == 1).map(|k| value(1, k.2).1);
        if was.eq(now) {
            continue;
        }
        let name = value(group[0].1, group[0].2).0;
        if codec(name) || owned(name) {
            ignored += 1;
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        for k in group.iter().filter(|k| k.1 == 1) {
            let v = value(1, k.2).1;
            added += name.len() + v.len() + 4;
            add.push((name.clone(), v.to_vec()));
        }
        if group[0].1 == 0 {
            strip.push(name);
        }
    }
    if added > MAX_ADDED_BYTES {
        strip.clear();
        add.clear();
        return Err(format!(
            "plugins add {added} header bytes (at most {MAX_ADDED_BYTES})"
        ));
    }
    Ok(ignored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Header, Headers, RequestView};
    use ferrogate_plugins::{PluginConfig, PluginLimits, PluginModule};

    /// A plugin from a module body (the exports every module needs are
    /// added); imports: `$add`, `$get`, `$replace` on header maps.
    fn plugin(body: &str) -> Plugin {
        let text = format!(
            r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (data (i32.const 256) "x-added")
  (data (i32.const 264) "1")
  (data (i32.const 272) "x-trap")
  (data (i32.const 288) "x-forwarded-for")
  (data (i32.const 304) "6.6.6.6")
  (data (i32.const 312) "x-resp")
  {body})"#
        );
        let bytes = wat::parse_str(&text).expect("test module");
        let module = PluginModule::compile(&bytes, &PluginLimits::default()).expect("compile");
        Plugin::new(
            module,
            PluginConfig {
                name: "t".into(),
                ..Default::default()
            },
        )
    }

    /// Adds `x-added: 1`, then traps when the request has `x-trap`; adds
    /// `x-resp: 1` to responses.
    const ADD_THEN_TRAP: &str = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
    (if (i32.eqz (call $get (i32.const 0) (i32.const 272) (i32.const 6) (i32.const 0) (i32.const 4)))
      (then unreachable))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 312) (i32.const 6) (i32.const 264) (i32.const 1)))
    (i32.const 0))"#;

    fn attach(plugin: &Plugin, fail_open: bool) -> AttachedPlugin {
        AttachedPlugin {
            plugin: plugin.clone(),
            fail_open,
        }
    }

    fn request<'a>(headers: &'a [Header<'a>]) -> RequestInfo<'a> {
        RequestInfo {
            view: RequestView::new("GET", Some("a"), "/x", Headers::from_list(headers)),
            target: "/x",
            http10: false,
            client_ip: "10.0.0.2".parse().unwrap(),
            listener_port: 80,
            https: false,
            identity: None,
            request_id: b"w1-7",
            client_sent_request_id: false,
            now: Instant::from_millis(0),
            looked_up: None,
        }
    }

    const TRAP: &[Header<'static>] = &[Header {
        name: "X-Trap",
        value: b"1",
    }];

    fn run(
        w: &mut WorkerPlugins,
        plugins: &[AttachedPlugin],
        headers: &[Header<'_>],
        edits: &mut PluginEdits,
        stats: &mut StackStats,
    ) -> ViewerVerdict {
        request_phase(
            w,
            plugins,
            &request(headers),
            None,
            "HTTP/1.1",
            true,
            edits,
            stats,
        )
    }

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn a_fail_open_failure_leaves_no_edit_of_the_failed_call() {
        let p = plugin(ADD_THEN_TRAP);
        let (mut w, mut stats, mut edits) = Default::default();
        let v = run(&mut w, &[attach(&p, true)], TRAP, &mut edits, &mut stats);
        assert!(matches!(v, ViewerVerdict::Continue));
        assert!(!edits.changes_request(), "{edits:?}");
        assert_eq!((stats.plugin_failures, stats.plugin_failed_open), (1, 1));
        // Its context ended with the failure: no response call, nothing open.
        assert_eq!(
            viewer_response(
                &mut w,
                RESPONSE,
                Instant::from_millis(0),
                &mut edits,
                &mut stats
            ),
            Ok(())
        );
        assert!(!edits.adds_response());
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
        assert_eq!(w.open_contexts(), 0);
        // Without the trap its edit goes through.
        let v = run(&mut w, &[attach(&p, true)], &[], &mut edits, &mut stats);
        assert!(matches!(v, ViewerVerdict::Continue));
        assert_eq!(edits.request_add, [("x-added".to_string(), b"1".to_vec())]);
        finish(&mut w, &mut edits, &mut stats);
    }

    #[test]
    fn a_pause_at_the_request_head_is_a_failure() {
        let p = plugin(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (i32.const 1))"#,
        );
        let (mut w, mut stats, mut edits) = Default::default();
        let v = run(&mut w, &[attach(&p, false)], &[], &mut edits, &mut stats);
        assert!(matches!(v, ViewerVerdict::Fail));
        assert_eq!(stats.plugin_failures, 1);
        finish(&mut w, &mut edits, &mut stats);
        let v = run(&mut w, &[attach(&p, true)], &[], &mut edits, &mut stats);
        assert!(matches!(v, ViewerVerdict::Continue));
        assert_eq!((stats.plugin_failures, stats.plugin_failed_open), (2, 1));
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
    }

    #[test]
    fn a_context_lost_to_another_requests_failure_fails_a_fail_closed_response() {
        let p = plugin(ADD_THEN_TRAP);
        let (mut w, mut stats) = (WorkerPlugins::default(), StackStats::default());
        let (mut first, mut second) = (PluginEdits::default(), PluginEdits::default());
        let closed = [attach(&p, false)];
        assert!(matches!(
            run(&mut w, &closed, &[], &mut first, &mut stats),
            ViewerVerdict::Continue
        ));
        // Another request makes the instance fail: the first's context is gone.
        assert!(matches!(
            run(&mut w, &closed, TRAP, &mut second, &mut stats),
            ViewerVerdict::Fail
        ));
        finish(&mut w, &mut second, &mut stats);
        let failures = stats.plugin_failures;
        let r = viewer_response(
            &mut w,
            RESPONSE,
            Instant::from_millis(0),
            &mut first,
            &mut stats,
        );
        assert_eq!(r, Err(ProxyError::PluginFailed));
        assert_eq!(stats.plugin_failures, failures + 1);
        finish(&mut w, &mut first, &mut stats);
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
    }

    #[test]
    fn edits_to_the_proxys_own_fields_are_ignored_and_counted() {
        let p = plugin(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $replace (i32.const 0) (i32.const 288) (i32.const 15) (i32.const 304) (i32.const 7)))
                 (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
                 (i32.const 0))"#,
        );
        let (mut w, mut stats, mut edits) = Default::default();
        let xff = [Header {
            name: "X-Forwarded-For",
            value: b"1.2.3.4",
        }];
        for headers in [&[][..], &xff[..]] {
            let v = run(
                &mut w,
                &[attach(&p, false)],
                headers,
                &mut edits,
                &mut stats,
            );
            assert!(matches!(v, ViewerVerdict::Continue));
            assert!(!edits.strips_request("x-forwarded-for"), "{edits:?}");
            assert_eq!(edits.request_add, [("x-added".to_string(), b"1".to_vec())]);
            finish(&mut w, &mut edits, &mut stats);
            edits.clear_edits();
        }
        assert_eq!(stats.plugin_edits_ignored, 2);
    }

    #[test]
    fn the_origin_phase_goes_on_from_the_viewer_phases_head_and_counts_an_ignored_edit_once() {
        use crate::route::{Route, RouteAction};
        let listener = plugin(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $replace (i32.const 0) (i32.const 288) (i32.const 15) (i32.const 304) (i32.const 7)))
                 (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
                 (i32.const 0))"#,
        );
        // Adds `x-resp: 1` to the request: the route's own edit.
        let route_plugin = plugin(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $add (i32.const 0) (i32.const 312) (i32.const 6) (i32.const 264) (i32.const 1)))
                 (i32.const 0))"#,
        );
        let route = Route::new(
            "r",
            RouteAction::Respond(Arc::new(DirectResponse {
                status: 200,
                content_type: "text/plain".into(),
                body: Vec::new(),
                location: None,
                retry_after: None,
                www_authenticate: None,
            })),
        );
        let (mut w, mut stats, mut edits): (WorkerPlugins, StackStats, PluginEdits) =
            Default::default();
        let info = request(&[]);
        for (plugins, route) in [
            (vec![attach(&listener, false)], None),
            (vec![attach(&route_plugin, false)], Some(&route)),
        ] {
            let v = request_phase(
                &mut w, &plugins, &info, route, "HTTP/1.1", true, &mut edits, &mut stats,
            );
            assert!(matches!(v, ViewerVerdict::Continue));
        }
        // Both phases' additions go upstream; the proxy's own field is not
        // touched, and its edit was counted once.
        assert_eq!(
            edits.request_add,
            [
                ("x-added".to_string(), b"1".to_vec()),
                ("x-resp".to_string(), b"1".to_vec())
            ]
        );
        assert!(!edits.strips_request("x-forwarded-for"));
        assert_eq!(stats.plugin_edits_ignored, 1);
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(
            (stats.plugin_contexts_created, stats.plugin_contexts_ended),
            (2, 2)
        );
    }

    /// A route's fail-open plugins whose edits together are past the
    /// limits lose their own edits only: the listener's stay.
    #[test]
    fn route_edits_past_the_limits_keep_the_listeners_edits() {
        use crate::route::{Route, RouteAction};
        let listener = plugin(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
                 (i32.const 0))"#,
        );
        let long = "v".repeat(9000);
        let route_plugin = plugin(&format!(
            r#"(data (i32.const 16384) "{long}")
               (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $add (i32.const 0) (i32.const 312) (i32.const 6) (i32.const 16384) (i32.const 9000)))
                 (i32.const 0))"#
        ));
        let route = Route::new(
            "r",
            RouteAction::Respond(Arc::new(DirectResponse {
                status: 200,
                content_type: "text/plain".into(),
                body: Vec::new(),
                location: None,
                retry_after: None,
                www_authenticate: None,
            })),
        );
        let (mut w, mut stats, mut edits): (WorkerPlugins, StackStats, PluginEdits) =
            Default::default();
        let info = request(&[]);
        for (plugins, route) in [
            (vec![attach(&listener, false)], None),
            (vec![attach(&route_plugin, true)], Some(&route)),
        ] {
            let v = request_phase(
                &mut w, &plugins, &info, route, "HTTP/1.1", true, &mut edits, &mut stats,
            );
            assert!(matches!(v, ViewerVerdict::Continue));
        }
        assert_eq!(
            edits.request_add,
            [("x-added".to_string(), b"1".to_vec())],
            "the listener's edit is gone"
        );
        assert_eq!((stats.plugin_failures, stats.plugin_failed_open), (1, 1));
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(
            (stats.plugin_contexts_created, stats.plugin_contexts_ended),
            (2, 2)
        );
    }

    #[test]
    fn an_instance_a_reload_drops_keeps_its_contexts_until_they_end() {
        use crate::route::{Listener, RouteTable};
        let p = plugin(ADD_THEN_TRAP);
        let table = |plugins: Vec<AttachedPlugin>| {
            RouteTable::new(
                1,
                vec![Listener::new(80, Vec::new()).with_plugins(plugins)],
                Vec::new(),
            )
        };
        let (mut w, mut stats, mut edits): (WorkerPlugins, StackStats, PluginEdits) =
            Default::default();
        w.sync(
            &table(vec![attach(&p, false)]),
            Instant::from_millis(0),
            &mut stats,
        );
        assert!(matches!(
            run(&mut w, &[attach(&p, false)], &[], &mut edits, &mut stats),
            ViewerVerdict::Continue
        ));
        // A reload with another plugin: the request in flight keeps its.
        let q = plugin(ADD_THEN_TRAP);
        w.sync(
            &table(vec![attach(&q, false)]),
            Instant::from_millis(0),
            &mut stats,
        );
        assert_eq!(w.open_contexts(), 1);
        assert_eq!(
            viewer_response(
                &mut w,
                RESPONSE,
                Instant::from_millis(0),
                &mut edits,
                &mut stats
            ),
            Ok(())
        );
        assert!(edits.adds_response(), "{edits:?}");
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(w.open_contexts(), 0);
        assert!(w.retiring.is_empty());
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
        assert_eq!(stats.plugin_failures, 0);
    }

    #[test]
    fn a_plugin_put_back_while_its_requests_are_in_flight_keeps_its_instance() {
        use crate::route::{Listener, RouteTable};
        let (p, q) = (plugin(ADD_THEN_TRAP), plugin(ADD_THEN_TRAP));
        let table = |plugins: Vec<AttachedPlugin>| {
            RouteTable::new(
                1,
                vec![Listener::new(80, Vec::new()).with_plugins(plugins)],
                Vec::new(),
            )
        };
        let (mut w, mut stats, mut edits): (WorkerPlugins, StackStats, PluginEdits) =
            Default::default();
        let t0 = Instant::from_millis(0);
        w.sync(&table(vec![attach(&p, false)]), t0, &mut stats);
        assert!(matches!(
            run(&mut w, &[attach(&p, false)], &[], &mut edits, &mut stats),
            ViewerVerdict::Continue
        ));
        // Taken off, then put back (the cache hands the same `Plugin`)
        // while the request is in flight.
        w.sync(&table(vec![attach(&q, false)]), t0, &mut stats);
        assert_eq!(w.retiring.len(), 1);
        w.sync(&table(vec![attach(&p, false)]), t0, &mut stats);
        assert!(w.retiring.is_empty(), "p's instance is current again");
        assert_eq!(stats.plugin_instances_started, 2, "p, q: no second p");
        assert_eq!(
            viewer_response(&mut w, RESPONSE, t0, &mut edits, &mut stats),
            Ok(())
        );
        assert!(edits.adds_response(), "{edits:?}");
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(w.open_contexts(), 0);
        assert!(w.retiring.is_empty());
        assert_eq!(stats.plugin_failures, 0);
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
    }

    #[test]
    fn a_context_is_ended_by_the_instance_that_made_it() {
        // Two instances of one plugin (however they came about): each
        // request's context is found in its own.
        let p = plugin(ADD_THEN_TRAP);
        let (mut w, mut stats, mut old): (WorkerPlugins, StackStats, PluginEdits) =
            Default::default();
        assert!(matches!(
            run(&mut w, &[attach(&p, false)], &[], &mut old, &mut stats),
            ViewerVerdict::Continue
        ));
        w.retiring.push(w.instances.pop().unwrap());
        let mut new = PluginEdits::default();
        w.instances
            .push(PluginInstance::new(&p, Now::default()).unwrap());
        assert!(matches!(
            run(&mut w, &[attach(&p, false)], &[], &mut new, &mut stats),
            ViewerVerdict::Continue
        ));
        let t0 = Instant::from_millis(0);
        for e in [&mut old, &mut new] {
            assert_eq!(viewer_response(&mut w, RESPONSE, t0, e, &mut stats), Ok(()));
            finish(&mut w, e, &mut stats);
        }
        assert!(w.retiring.is_empty());
        assert_eq!(w.open_contexts(), 0);
        assert_eq!(stats.plugin_failures, 0);
    }

    #[test]
    fn a_head_past_the_map_limits_is_431_and_fails_no_plugin() {
        let p = plugin(ADD_THEN_TRAP);
        let (mut w, mut stats): (WorkerPlugins, StackStats) = Default::default();
        let closed = [attach(&p, false)];
        let t0 = Instant::from_millis(0);
        // A request in flight on the instance.
        let mut first = PluginEdits::default();
        assert!(matches!(
            run(&mut w, &closed, &[], &mut first, &mut stats),
            ViewerVerdict::Continue
        ));
        // Another client's head with 300 fields (HTTP/2 lets that through).
        let names: Vec<String> = (0..300).map(|i| format!("x-{i}")).collect();
        let big: Vec<Header<'_>> = names
            .iter()
            .map(|name| Header {
                name: name.as_str(),
                value: b"1",
            })
            .collect();
        let mut edits = PluginEdits::default();
        assert!(matches!(
            run(&mut w, &closed, &big, &mut edits, &mut stats),
            ViewerVerdict::TooLarge
        ));
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(stats.plugin_heads_too_large, 1);
        assert_eq!((stats.plugin_failures, stats.plugin_calls), (0, 1));
        // The first request's context is live; the next request passes.
        assert_eq!(
            viewer_response(&mut w, RESPONSE, t0, &mut first, &mut stats),
            Ok(())
        );
        assert!(first.adds_response());
        finish(&mut w, &mut first, &mut stats);
        assert!(matches!(
            run(&mut w, &closed, &[], &mut edits, &mut stats),
            ViewerVerdict::Continue
        ));
        assert!(edits.changes_request());
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(stats.plugin_failures, 0);
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
    }

    #[test]
    fn a_failure_ending_a_request_is_counted() {
        let p = plugin(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (i32.const 0))
               (func (export "proxy_on_done") (param i32) (result i32) unreachable)"#,
        );
        let (mut w, mut stats, mut edits): (WorkerPlugins, StackStats, PluginEdits) =
            Default::default();
        assert!(matches!(
            run(&mut w, &[attach(&p, false)], &[], &mut edits, &mut stats),
            ViewerVerdict::Continue
        ));
        assert_eq!(stats.plugin_failures, 0);
        finish(&mut w, &mut edits, &mut stats);
        assert_eq!(stats.plugin_failures, 1);
        assert_eq!(stats.plugin_contexts_created, stats.plugin_contexts_ended);
    }

    #[test]
    fn an_instance_full_of_live_contexts_is_not_replaced_under_them() {
        let p = plugin(ADD_THEN_TRAP);
        let (mut w, mut stats): (WorkerPlugins, StackStats) = Default::default();
        let open = [attach(&p, true)];
        let mut requests: Vec<PluginEdits> = (0..MAX_OPEN_CONTEXTS)
            .map(|_| {
                let mut e = PluginEdits::default();
                assert!(matches!(
                    run(&mut w, &open, &[], &mut e, &mut stats),
                    ViewerVerdict::Continue
                ));
                e
            })
            .collect();
        assert_eq!(stats.plugin_failures, 0);
        // One more: refused (counted, let through), the others untouched.
        let mut extra = PluginEdits::default();
        assert!(matches!(
            run(&mut w, &open, &[], &mut extra, &mut stats),
            ViewerVerdict::Continue
        ));
        assert_eq!((stats.plugin_failures, stats.plugin_failed_open), (1, 1));
        assert!(!extra.changes_request());
        let first = &mut requests[0];
        assert_eq!(
            viewer_response(&mut w, RESPONSE, Instant::from_millis(0), first, &mut stats),
            Ok(())
        );
        assert!(first.adds_response(), "the first request's context is live");
        for e in &mut requests {
            finish(&mut w, e, &mut stats);
        }
        assert_eq!(w.open_contexts(), 0);
        assert_eq!(stats.plugin_failures, 1);
    }

    #[test]
    fn a_local_answer_past_its_bound_is_a_failure() {
        let mut edits = PluginEdits::default();
        let big = ferrogate_plugins::LocalResponse {
            status: 403,
            details: Vec::new(),
            headers: HeaderList::new(),
            body: vec![b'x'; MAX_LOCAL_BODY + 1],
            grpc_status: -1,
        };
        assert!(local_answer(big.clone(), &mut edits).is_err());
        let ok = ferrogate_plugins::LocalResponse {
            body: vec![b'x'; MAX_LOCAL_BODY],
            ..big
        };
        assert_eq!(local_answer(ok, &mut edits).unwrap().status, 403);
    }

    #[test]
    fn diff_refuses_lists_past_the_limits_and_too_many_added_bytes() {
        let (mut strip, mut add) = (Vec::new(), Vec::new());
        let long = "v".repeat(MAX_ADDED_BYTES);
        let after = HeaderList::from_pairs([("x-big", long.as_str())]);
        assert!(diff(&HeaderList::new(), &after, |_| false, &mut strip, &mut add).is_err());
        assert!(strip.is_empty() && add.is_empty());
        let many = HeaderList::from_pairs(
            (0..=ferrogate_plugins::MAX_MAP_FIELDS).map(|i| (format!("x-{i}"), "1")),
        );
        assert!(diff(&HeaderList::new(), &many, |_| false, &mut strip, &mut add).is_err());
    }

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        HeaderList::from_pairs(pairs.iter().map(|(n, v)| (*n, *v)))
    }

    #[test]
    fn a_changed_field_is_replaced_whole_and_an_added_one_only_added() {
        let before = list(&[("a", "1"), ("B", "2"), ("b", "3"), ("c", "4")]);
        let after = list(&[("a", "1"), ("b", "2"), ("c", "5"), ("d", "6")]);
        let (mut strip, mut add) = (Vec::new(), Vec::new());
        diff(&before, &after, |_| false, &mut strip, &mut add).unwrap();
        assert_eq!(strip, ["B", "c"]);
        assert_eq!(
            add,
            [
                ("B".to_string(), b"2".to_vec()),
                ("c".to_string(), b"5".to_vec()),
                ("d".to_string(), b"6".to_vec())
            ]
        );
    }

    #[test]
    fn the_quick_ways_agree_with_the_sorted_one() {
        let before = list(&[("a", "1"), ("b", "2")]);
        let run = |after: &HeaderList| {
            let (mut strip, mut add) = (Vec::new(), Vec::new());
            let r = diff(&before, after, |n| n == b"x-owned", &mut strip, &mut add);
            (r, strip, add)
        };
        // Unchanged.
        assert_eq!(run(&before.clone()), (Ok(0), vec![], vec![]));
        // One new field: added, nothing stripped.
        let (r, strip, add) = run(&list(&[("a", "1"), ("b", "2"), ("X-New", "v")]));
        assert_eq!((r, strip), (Ok(0), vec![]));
        assert_eq!(add, [("X-New".to_string(), b"v".to_vec())]);
        // One new field of a name the codec or the proxy owns: ignored.
        assert_eq!(
            run(&list(&[("a", "1"), ("b", "2"), ("Content-Length", "9")])).0,
            Ok(1)
        );
        assert_eq!(
            run(&list(&[("a", "1"), ("b", "2"), ("x-owned", "9")])).0,
            Ok(1)
        );
        // One more field of a name already there: the name is replaced
        // whole (the sorted way), as before the quick ways existed.
        let (r, strip, add) = run(&list(&[("a", "1"), ("b", "2"), ("B", "3")]));
        assert_eq!((r, strip), (Ok(0), vec!["b".to_string()]));
        assert_eq!(
            add,
            [
                ("b".to_string(), b"2".to_vec()),
                ("b".to_string(), b"3".to_vec())
            ]
        );
        // Too many added bytes: refused, nothing kept.
        let big = "v".repeat(MAX_ADDED_BYTES);
        let (r, strip, add) = run(&list(&[("a", "1"), ("b", "2"), ("x-big", big.as_str())]));
        assert!(r.is_err() && strip.is_empty() && add.is_empty());
    }

    #[test]
    fn framing_fields_host_and_pseudo_headers_are_the_codecs() {
        let before = list(&[(":path", "/"), ("content-length", "3"), ("host", "a")]);
        let after = list(&[(":path", "/x"), ("transfer-encoding", "chunked")]);
        let (mut strip, mut add) = (Vec::new(), Vec::new());
        assert_eq!(
            diff(&before, &after, |_| false, &mut strip, &mut add),
            Ok(4)
        );
        assert!(strip.is_empty() && add.is_empty(), "{strip:?} {add:?}");
    }
}
