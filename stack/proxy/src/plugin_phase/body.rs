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
    edits.contexts.iter().any(|(plugin, ctx)| {
        workers
            .holder(plugin, *ctx)
            .is_some_and(|i| i.has_response_body_phase())
    })
}

/// The bytes each context holds, in call order (the response's: the last
/// context first).
#[derive(Debug, Default)]
pub(crate) struct ResponseBody {
    held: Vec<Vec<u8>>,
    /// Scratch for what moves from one context to the next.
    carry: Vec<u8>,
}

impl ResponseBody {
    /// Hands `data` (the origin's payload, without framing) through the
    /// contexts; Ok: what comes out at the end (often nothing while a
    /// context holds the body). `eos`: the body ends with `data` (every
    /// context is called, with all it holds). Err: a plugin that is not
    /// `fail_open` failed; the response must be cut (its head is out).
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
        self.held.resize_with(n, Vec::new);
        self.carry.clear();
        self.carry.extend_from_slice(data);
        let now = guest_now(now);
        for k in 0..n {
            // Response order: the last attached context first.
            let i = n - 1 - k;
            let (plugin, ctx) = &edits.contexts[i];
            let fail_open = edits.fail_open[i];
            let held = &mut self.held[k];
            held.append(&mut self.carry);
            if held.is_empty() && !eos {
                continue;
            }
            let outcome = if held.len() > MAX_HELD {
                Outcome::Failed(ferrogate_plugins::Failure {
                    kind: FailureKind::AbiViolation,
                    reason: format!("held more than {MAX_HELD} bytes of the response body"),
                })
            } else {
                match workers.holder(plugin, *ctx) {
                    // Without the callback the bytes pass straight on.
                    Some(inst) if !inst.has_response_body_phase() => Outcome::Continue,
                    Some(inst) => {
                        stats.plugin_calls += 1;
                        inst.set_time(now);
                        // Under fail_open a failed call leaves the body as
                        // it came (the guest may have half-changed it).
                        let saved = fail_open.then(|| held.clone());
                        let o = inst.on_response_body(*ctx, held, eos);
                        if let (Outcome::Failed(_), Some(saved)) = (&o, saved) {
                            *held = saved;
                        }
                        o
                    }
                    None => {
                        stats.plugin_calls += 1;
                        Outcome::Failed(ferrogate_plugins::Failure {
                            kind: FailureKind::UnknownContext,
                            reason: "the context was lost to a failure of its instance".into(),
                        })
                    }
                }
            };
            let reason = match outcome {
                Outcome::Continue => None,
                // Nothing more will come: holding on means nothing.
                Outcome::Pause if eos => None,
                Outcome::Pause => {
                    // Held for the next piece; the later contexts wait.
                    return Ok(&[]);
                }
                Outcome::LocalResponse(_) => {
                    Some("a local answer at the response body phase (the head is out)".to_string())
                }
                Outcome::Failed(f) => Some(f.to_string()),
            };
            if let Some(reason) = reason {
                stats.plugin_failures += 1;
                tracing::debug!(plugin = plugin.name(), %reason, "plugin call failed at the response body");
                if !fail_open {
                    return Err(ProxyError::PluginFailed);
                }
                stats.plugin_failed_open += 1;
            }
            std::mem::swap(&mut self.carry, held);
        }
        Ok(&self.carry)
    }
}
