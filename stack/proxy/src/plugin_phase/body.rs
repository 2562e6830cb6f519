//! The response body through the plugins' body phase
//! (`proxy_on_response_body`), streamed as each filter asks: every piece
//! the origin sends is handed to the first context (the route's, then the
//! listener's: the response order); `Continue` passes what the context
//! left on to the next, `StopIterationAndBuffer` keeps it there until more
//! comes or the body ends, when the context is called with all it holds.
//! What the last context passes on goes to the client.
//!
//! A plugin may change the body's length, so the proxy re-frames the
//! response (chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0).
//! What a context may hold is bounded ([`MAX_HELD`]): past it the call is
//! a failure of that plugin (the response is cut, or the held bytes go on
//! unchanged under `fail_open`).

use ferrogate_plugins::{FailureKind, Outcome};

use super::{PluginEdits, WorkerPlugins, guest_now};
use crate::error::ProxyError;
use crate::net::Instant;
use crate::stats::StackStats;

/// Bytes one context may hold back (buffer) of a response body.
pub const MAX_HELD: usize = 1 << 20;

/// Whether a plugin of this request handles response bodies: its response
/// is then streamed through [`ResponseBody`].
pub(crate) fn wants_response_body(workers: &mut WorkerPlugins, edits: &PluginEdits) -> bool {
    wants(workers, edits, Direction::Response)
}

/// Whether a plugin of this request handles request bodies (the request
/// body then goes up through [`ResponseBody`] with [`Direction::Request`]).
pub(crate) fn wants_request_body(workers: &mut WorkerPlugins, edits: &PluginEdits) -> bool {
    wants(workers, edits, Direction::Request)
}

fn wants(workers: &mut WorkerPlugins, edits: &PluginEdits, dir: Direction) -> bool {
    edits.contexts.iter().any(|(plugin, ctx)| {
        workers
            .holder(plugin, *ctx)
            .is_some_and(|i| dir.has_phase(i) || dir.has_trailers_phase(i))
    })
}

/// Whether a plugin of this request takes the trailers of `dir`'s body.
pub(crate) fn wants_trailers(
    workers: &mut WorkerPlugins,
    edits: &PluginEdits,
    dir: Direction,
) -> bool {
    edits.contexts.iter().any(|(plugin, ctx)| {
        workers
            .holder(plugin, *ctx)
            .is_some_and(|i| dir.has_trailers_phase(i))
    })
}

/// Which body a chain carries: the request's goes through the contexts in
/// order (the listener's, then the route's), the response's in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Direction {
    Request,
    #[default]
    Response,
}

impl Direction {
    fn has_phase(self, i: &ferrogate_plugins::PluginInstance) -> bool {
        match self {
            Direction::Request => i.has_request_body_phase(),
            Direction::Response => i.has_response_body_phase(),
        }
    }

    fn has_trailers_phase(self, i: &ferrogate_plugins::PluginInstance) -> bool {
        match self {
            Direction::Request => i.has_request_trailers_phase(),
            Direction::Response => i.has_response_trailers_phase(),
        }
    }
}

/// The bytes each context holds, in call order (the response's: the last
/// context first).
#[derive(Debug, Default)]
pub(crate) struct ResponseBody {
    dir: Direction,
    contexts: Vec<Held>,
    /// Scratch for what moves from one context to the next.
    carry: Vec<u8>,
}

/// One context's share of the body.
#[derive(Debug, Default)]
struct Held {
    /// What it holds (it paused on), as it left it.
    bytes: Vec<u8>,
    /// Under `fail_open`: the same bytes as they came, for a failed call
    /// to pass on unchanged (appended to, never copied whole).
    came: Vec<u8>,
    /// It failed under `fail_open`: the rest of the body passes it by,
    /// uncalled and uncounted.
    bypassed: bool,
}

impl ResponseBody {
    /// A chain for the request's body (the default is the response's).
    pub(crate) fn request() -> Self {
        Self {
            dir: Direction::Request,
            ..Self::default()
        }
    }

    /// Hands `data` (the origin's payload, without framing) through the
    /// contexts; Ok: what comes out at the end (often nothing while a
    /// context holds the body). `eos`: the body ends with `data` (every
    /// context is called, with all it holds). Err: a plugin that is not
    /// `fail_open` failed; the response must be cut (its head is out).
    /// What a context holds after a call, and what one call makes of the
    /// body, are bounded by [`MAX_HELD`] (past it: that plugin's failure).
    pub(crate) fn feed(
        &mut self,
        workers: &mut WorkerPlugins,
        edits: &PluginEdits,
        data: &[u8],
        eos: bool,
        now: Instant,
        stats: &mut StackStats,
    ) -> Result<&[u8], ProxyError> {
        let n = edits.contexts.len();
        self.contexts.resize_with(n, Held::default);
        self.carry.clear();
        self.carry.extend_from_slice(data);
        let now = guest_now(now);
        for k in 0..n {
            // Response order: the last attached context first.
            let i = match self.dir {
                Direction::Request => k,
                Direction::Response => n - 1 - k,
            };
            let (plugin, ctx) = &edits.contexts[i];
            let fail_open = edits.fail_open[i];
            let held = &mut self.contexts[k];
            if held.bypassed {
                continue;
            }
            let inst = workers.holder(plugin, *ctx);
            // Without the callback the bytes pass straight on.
            if inst.as_ref().is_some_and(|i| !self.dir.has_phase(i)) {
                continue;
            }
            if fail_open {
                held.came.extend_from_slice(&self.carry);
            }
            held.bytes.append(&mut self.carry);
            if held.bytes.is_empty() && !eos {
                continue;
            }
            stats.plugin_calls += 1;
            let mut outcome = match inst {
                Some(inst) => {
                    inst.set_time(now);
                    match self.dir {
                        Direction::Request => inst.on_request_body(*ctx, &mut held.bytes, eos),
                        Direction::Response => inst.on_response_body(*ctx, &mut held.bytes, eos),
                    }
                }
                None => Outcome::Failed(ferrogate_plugins::Failure {
                    kind: FailureKind::UnknownContext,
                    reason: "the context was lost to a failure of its instance".into(),
                }),
            };
            if held.bytes.len() > MAX_HELD && !matches!(outcome, Outcome::Failed(_)) {
                outcome = Outcome::Failed(ferrogate_plugins::Failure {
                    kind: FailureKind::AbiViolation,
                    reason: format!("held or made more than {MAX_HELD} bytes of a body"),
                });
            }
            let reason = match outcome {
                Outcome::Continue => None,
                // Nothing more will come: holding on means nothing.
                Outcome::Pause if eos => None,
                Outcome::Pause => {
                    // Held for the next piece; the later contexts wait.
                    return Ok(&[]);
                }
                Outcome::LocalResponse(_) => {
                    Some("a local answer at a body phase (not supported)".to_string())
                }
                Outcome::Failed(f) => Some(f.to_string()),
            };
            if let Some(reason) = reason {
                stats.plugin_failures += 1;
                tracing::debug!(plugin = plugin.name(), %reason, dir = ?self.dir, "plugin call failed at a body phase");
                if !fail_open {
                    return Err(ProxyError::PluginFailed);
                }
                stats.plugin_failed_open += 1;
                // What it held goes on as it came; the rest passes it by.
                std::mem::swap(&mut held.bytes, &mut held.came);
                held.bypassed = true;
            }
            held.came.clear();
            std::mem::swap(&mut self.carry, &mut held.bytes);
            held.bytes.clear();
        }
        Ok(&self.carry)
    }

    /// The direction of this chain.
    pub(crate) fn direction(&self) -> Direction {
        self.dir
    }

    /// The end of a body that has trailers, for a chain that takes them
    /// (as Envoy: the last body call has `end_of_stream` false for a
    /// context with a trailers callback, true for one without): each
    /// context in call order gets the last of the body (`data`, what the
    /// earlier ones released), then the trailers (`proxy_on_*_trailers`,
    /// which may read, replace, add and remove them); then what it held is
    /// released to the next. Ok: the rest of the body, to go before the
    /// trailers. Err: a plugin that is not `fail_open` failed (at its body
    /// or its trailers); under `fail_open` a failed call's bytes and
    /// trailers go on as they came to it, counted once.
    pub(crate) fn end_with_trailers(
        &mut self,
        workers: &mut WorkerPlugins,
        edits: &PluginEdits,
        data: &[u8],
        trailers: &mut Vec<crate::http::TrailerField>,
        now: Instant,
        stats: &mut StackStats,
    ) -> Result<&[u8], ProxyError> {
        let n = edits.contexts.len();
        self.contexts.resize_with(n, Held::default);
        self.carry.clear();
        self.carry.extend_from_slice(data);
        let now = guest_now(now);
        for k in 0..n {
            let i = match self.dir {
                Direction::Request => k,
                Direction::Response => n - 1 - k,
            };
            let (plugin, ctx) = &edits.contexts[i];
            let fail_open = edits.fail_open[i];
            let held = &mut self.contexts[k];
            if held.bypassed {
                continue;
            }
            let dir = self.dir;
            let Some(inst) = workers.holder(plugin, *ctx) else {
                stats.plugin_failures += 1;
                if !fail_open {
                    return Err(ProxyError::PluginFailed);
                }
                stats.plugin_failed_open += 1;
                held.bypassed = true;
                continue;
            };
            inst.set_time(now);
            let mut failed: Option<String> = None;
            if dir.has_phase(inst) {
                if fail_open {
                    held.came.extend_from_slice(&self.carry);
                }
                held.bytes.append(&mut self.carry);
                // As Envoy, `end_of_stream` is false when trailers follow,
                // for a context that gets them; one that cannot (no
                // trailers callback) is told the body ended, so what a
                // body plugin makes does not depend on the others.
                let eos = !dir.has_trailers_phase(inst);
                if !held.bytes.is_empty() || eos {
                    stats.plugin_calls += 1;
                    let outcome = match dir {
                        Direction::Request => inst.on_request_body(*ctx, &mut held.bytes, eos),
                        Direction::Response => inst.on_response_body(*ctx, &mut held.bytes, eos),
                    };
                    failed = match outcome {
                        // Paused: what it holds goes on after its trailers.
                        Outcome::Continue | Outcome::Pause => None,
                        Outcome::LocalResponse(_) => {
                            Some("a local answer at a body phase (not supported)".to_string())
                        }
                        Outcome::Failed(f) => Some(f.to_string()),
                    };
                    if failed.is_none() && held.bytes.len() > MAX_HELD {
                        failed = Some(format!("held or made more than {MAX_HELD} bytes of a body"));
                    }
                }
            } else {
                held.bytes.append(&mut self.carry);
            }
            if failed.is_none() && dir.has_trailers_phase(inst) {
                let came = fail_open.then(|| trailers.clone());
                let mut list = ferrogate_plugins::HeaderList::from_pairs(std::mem::take(trailers));
                stats.plugin_calls += 1;
                let outcome = match dir {
                    Direction::Request => inst.on_request_trailers(*ctx, &mut list),
                    Direction::Response => inst.on_response_trailers(*ctx, &mut list),
                };
                *trailers = list.into_pairs();
                failed = match outcome {
                    // Nothing more will come: holding on means nothing.
                    Outcome::Continue | Outcome::Pause => None,
                    Outcome::LocalResponse(_) => {
                        Some("a local answer at a trailers phase (not supported)".to_string())
                    }
                    Outcome::Failed(f) => Some(f.to_string()),
                };
                if failed.is_some()
                    && let Some(came) = came
                {
                    *trailers = came;
                }
            }
            if let Some(reason) = failed {
                stats.plugin_failures += 1;
                tracing::debug!(plugin = plugin.name(), %reason, ?dir, "plugin call failed at the end of a body");
                if !fail_open {
                    return Err(ProxyError::PluginFailed);
                }
                stats.plugin_failed_open += 1;
                if dir.has_phase(inst) {
                    std::mem::swap(&mut held.bytes, &mut held.came);
                }
                held.bypassed = true;
            }
            held.came.clear();
            std::mem::swap(&mut self.carry, &mut held.bytes);
            held.bytes.clear();
        }
        // The plugins' trailers go on as the proxy may send them.
        let went = crate::trailers::clean(trailers, stats);
        stats.plugin_edits_ignored += went as u64;
        Ok(&self.carry)
    }
}
