//! proxy-wasm plugins (`ferrogate-plugins`) at the viewer phases: a
//! listener's plugins see each request's head before routing (viewer
//! request) and its response head before the client write (viewer
//! response), on HTTP/1 and HTTP/2 alike.
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
//! Left out for now (the plugin crate has the calls): request and response
//! bodies and trailers, the origin phases (route-attached plugins),
//! cached responses (a hit is served without the response phase), ticks.

use std::sync::Arc;

use ferrogate_plugins::{
    Failure, FailureKind, HeaderList, HttpContextId, Now, Outcome, Plugin, PluginInstance,
    Properties,
};

use crate::http::{CODEC_OWNED, HeaderLines};
use crate::net::Instant;
use crate::phases::RequestInfo;
use crate::route::{DirectResponse, RouteTable};
use crate::stats::StackStats;

/// A plugin on a listener.
#[derive(Debug, Clone)]
pub struct AttachedPlugin {
    pub plugin: Plugin,
    /// A failed call lets the request go on instead of answering 500.
    pub fail_open: bool,
}

/// Contexts a request may leave open (it ended without a response head,
/// e.g. the client went away) before the instance holding them is
/// replaced: bounds what such requests leave in the guest.
const MAX_OPEN_CONTEXTS: usize = 4096;

/// A worker's plugin instances, one per plugin of its snapshot.
#[derive(Default)]
pub(crate) struct WorkerPlugins {
    instances: Vec<PluginInstance>,
}

impl WorkerPlugins {
    fn position(&self, plugin: &Plugin) -> Option<usize> {
        self.instances
            .iter()
            .position(|i| i.plugin().ptr_eq(plugin))
    }

    /// The worker's instance of `plugin`, made on first use.
    fn instance(
        &mut self,
        plugin: &Plugin,
        now: Now,
        stats: &mut StackStats,
    ) -> Result<&mut PluginInstance, Failure> {
        let i = match self.position(plugin) {
            Some(i) if self.instances[i].open_contexts() > MAX_OPEN_CONTEXTS => {
                self.instances[i] = PluginInstance::new(plugin, now)?;
                stats.plugin_instances_replaced += 1;
                i
            }
            Some(i) => i,
            None => {
                self.instances.push(PluginInstance::new(plugin, now)?);
                stats.plugin_instances_started += 1;
                self.instances.len() - 1
            }
        };
        let inst = &mut self.instances[i];
        inst.set_time(now);
        Ok(inst)
    }

    /// Keeps the instances of the plugins `routes` uses, starts the ones it
    /// adds (off the request path: a snapshot swap), drops the rest.
    pub(crate) fn sync(&mut self, routes: &RouteTable, now: Instant, stats: &mut StackStats) {
        let attached = || {
            routes
                .listeners()
                .iter()
                .flat_map(|l| l.plugins().iter().map(|a| &a.plugin))
        };
        self.instances
            .retain(|i| attached().any(|p| p.ptr_eq(i.plugin())));
        let now = guest_now(now);
        let plugins: Vec<Plugin> = attached().cloned().collect();
        for p in &plugins {
            if self.position(p).is_none()
                && let Err(e) = self.instance(p, now, stats)
            {
                stats.plugin_failures += 1;
                tracing::warn!(plugin = p.name(), error = %e, "plugin did not start on this worker");
            }
        }
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
#[derive(Debug, Clone, Default)]
pub struct PluginEdits {
    contexts: Vec<(Plugin, HttpContextId)>,
    request_strip: Vec<String>,
    request_add: Vec<(String, Vec<u8>)>,
    response_strip: Vec<String>,
    response_add: Vec<(String, Vec<u8>)>,
    /// Which attachment each context belongs to (fail_open per context).
    fail_open: Vec<bool>,
}

impl PluginEdits {
    /// The header edits (not the contexts: [`finish`] ends those).
    pub fn clear_edits(&mut self) {
        self.request_strip.clear();
        self.request_add.clear();
        self.response_strip.clear();
        self.response_add.clear();
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
}

/// What the viewer request phase decided.
pub(crate) enum ViewerVerdict {
    Continue,
    Respond(Arc<DirectResponse>),
    Fail,
}

/// The request's properties for the guest.
fn request_properties(info: &RequestInfo<'_>, protocol: &str) -> Properties {
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

/// Viewer request: runs `plugins` in order on the request head; their
/// changes go to `edits`, their contexts stay open for the response.
pub(crate) fn viewer_request(
    workers: &mut WorkerPlugins,
    plugins: &[AttachedPlugin],
    info: &RequestInfo<'_>,
    protocol: &str,
    end_of_stream: bool,
    edits: &mut PluginEdits,
    stats: &mut StackStats,
) -> ViewerVerdict {
    if plugins.is_empty() {
        return ViewerVerdict::Continue;
    }
    let now = guest_now(info.now);
    let before = request_map(info);
    let mut headers = before.clone();
    for a in plugins {
        stats.plugin_calls += 1;
        let outcome = match workers.instance(&a.plugin, now, stats) {
            Ok(inst) => match inst.create_http_context(request_properties(info, protocol)) {
                Ok(ctx) => {
                    edits.contexts.push((a.plugin.clone(), ctx));
                    edits.fail_open.push(a.fail_open);
                    inst.on_request_headers(ctx, &mut headers, end_of_stream)
                }
                Err(e) => Outcome::Failed(e),
            },
            Err(e) => Outcome::Failed(e),
        };
        match outcome {
            // No body phase yet: a pause on the head goes on.
            Outcome::Continue | Outcome::Pause => {}
            Outcome::LocalResponse(r) => {
                stats.plugin_local_responses += 1;
                let content_type = r
                    .headers
                    .get(b"content-type")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| "text/plain".into());
                edits.response_add.clear();
                for (n, v) in r.headers.pairs() {
                    let name = String::from_utf8_lossy(n);
                    if !name.eq_ignore_ascii_case("content-type") && !name.starts_with(':') {
                        edits.response_add.push((name.into_owned(), v.clone()));
                    }
                }
                let status = if (200..=599).contains(&r.status) {
                    r.status
                } else {
                    500
                };
                return ViewerVerdict::Respond(Arc::new(DirectResponse {
                    status,
                    content_type,
                    body: r.body,
                    location: None,
                    retry_after: None,
                    www_authenticate: None,
                }));
            }
            Outcome::Failed(e) => {
                stats.plugin_failures += 1;
                tracing::debug!(plugin = a.plugin.name(), error = %e, "plugin call failed at the viewer request");
                if !a.fail_open {
                    return ViewerVerdict::Fail;
                }
                stats.plugin_failed_open += 1;
            }
        }
    }
    diff(
        &before,
        &headers,
        &mut edits.request_strip,
        &mut edits.request_add,
    );
    ViewerVerdict::Continue
}

/// Viewer response: runs the request's plugins (in reverse, as Envoy runs
/// response filters) on the response head in `head` (an HTTP/1 head as the
/// origin sent it); their changes go to `edits`. Err: a call failed and its
/// plugin is not `fail_open` (the client gets a 500 instead).
pub(crate) fn viewer_response(
    workers: &mut WorkerPlugins,
    head: &[u8],
    now: Instant,
    edits: &mut PluginEdits,
    stats: &mut StackStats,
) -> Result<(), ()> {
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
    let mut headers = before.clone();
    let now = guest_now(now);
    let mut result = Ok(());
    for i in (0..edits.contexts.len()).rev() {
        let (plugin, ctx) = &edits.contexts[i];
        let Some(pos) = workers.position(plugin) else {
            continue;
        };
        let inst = &mut workers.instances[pos];
        inst.set_time(now);
        if let Some(p) = inst.properties_mut(*ctx) {
            p.set_u64("response.code", u64::from(code));
        }
        match inst.on_response_headers(*ctx, &mut headers, false) {
            // The instance failed since this request's head (this
            // request's own failure, let through by `fail_open`, or
            // another's): its context is gone, nothing to call.
            Outcome::Failed(f) if f.kind == FailureKind::Poisoned => continue,
            Outcome::Continue | Outcome::Pause => stats.plugin_calls += 1,
            // A local answer once the origin's is here: not supported at
            // this phase; counted as a failure of the call.
            Outcome::LocalResponse(_) | Outcome::Failed(_) => {
                stats.plugin_calls += 1;
                stats.plugin_failures += 1;
                if !edits.fail_open[i] {
                    result = Err(());
                    break;
                }
                stats.plugin_failed_open += 1;
            }
        }
    }
    diff(
        &before,
        &headers,
        &mut edits.response_strip,
        &mut edits.response_add,
    );
    result
}

/// Ends the request's contexts (`on_done`, `on_log`, `on_delete`).
pub(crate) fn finish(workers: &mut WorkerPlugins, edits: &mut PluginEdits) {
    for (plugin, ctx) in edits.contexts.drain(..) {
        if let Some(pos) = workers.position(&plugin) {
            let _ = workers.instances[pos].finish(ctx);
        }
    }
    edits.fail_open.clear();
}

/// What turned `before` into `after`, as fields to leave out and lines to
/// add: every field whose values changed is replaced as a whole. Framing
/// fields and pseudo-headers are the codec's: changes to them are ignored.
fn diff(
    before: &HeaderList,
    after: &HeaderList,
    strip: &mut Vec<String>,
    add: &mut Vec<(String, Vec<u8>)>,
) {
    let owned = |n: &[u8]| {
        n.first() == Some(&b':')
            || CODEC_OWNED
                .iter()
                .any(|f| f.as_bytes().eq_ignore_ascii_case(n))
            || n.eq_ignore_ascii_case(b"host")
    };
    let values = |list: &HeaderList, name: &[u8]| -> Vec<Vec<u8>> {
        list.pairs()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut seen: Vec<&[u8]> = Vec::new();
    for (name, _) in before.pairs().iter().chain(after.pairs()) {
        if owned(name) || seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        seen.push(name);
        let was = values(before, name);
        let now = values(after, name);
        if was == now {
            continue;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        for v in now {
            add.push((name.clone(), v));
        }
        if !was.is_empty() {
            strip.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        HeaderList::from_pairs(pairs.iter().map(|(n, v)| (*n, *v)))
    }

    #[test]
    fn a_changed_field_is_replaced_whole_and_an_added_one_only_added() {
        let before = list(&[("a", "1"), ("B", "2"), ("b", "3"), ("c", "4")]);
        let after = list(&[("a", "1"), ("b", "2"), ("c", "5"), ("d", "6")]);
        let (mut strip, mut add) = (Vec::new(), Vec::new());
        diff(&before, &after, &mut strip, &mut add);
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
    fn framing_fields_host_and_pseudo_headers_are_the_codecs() {
        let before = list(&[(":path", "/"), ("content-length", "3"), ("host", "a")]);
        let after = list(&[(":path", "/x"), ("transfer-encoding", "chunked")]);
        let (mut strip, mut add) = (Vec::new(), Vec::new());
        diff(&before, &after, &mut strip, &mut add);
        assert!(strip.is_empty() && add.is_empty(), "{strip:?} {add:?}");
    }
}
