//! The HTTP/1 response body through the plugins' body phase (#22): the
//! origin's payload (its framing taken off) goes piece by piece through
//! `plugin_phase::ResponseBody`, and what the plugins pass on goes to the
//! client re-framed (chunked; close-delimited for HTTP/1.0), since a plugin
//! may change the length. The plain streaming path stays as it was for
//! requests without a body plugin.

use std::io::Write as _;

use super::{Body, Conn, Ctx, Phase};
use crate::error::ProxyError;
use crate::phases::ProxyHttp;
use crate::plugin_phase::ResponseBody;

/// Origin bytes taken per step: a plugin is called at most once per step.
const STEP: usize = 16 * 1024;

/// A response body on its way through the plugins.
#[derive(Debug, Default)]
pub(crate) struct PluginBody {
    chain: ResponseBody,
    /// Framed bytes for the client, sent from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The origin's payload of one step, and what the plugins made of it.
    payload: Vec<u8>,
    data: Vec<u8>,
    /// Chunked to the client (else close-delimited).
    chunked: bool,
    /// The last piece went through the plugins: once `out` is sent, the
    /// response is complete.
    ended: bool,
}

impl PluginBody {
    pub(crate) fn new(chunked: bool) -> Box<Self> {
        Box::new(Self {
            chunked,
            ..Self::default()
        })
    }

    /// Bytes wait for the client.
    pub(crate) fn pending(&self) -> bool {
        self.sent < self.out.len()
    }
}

/// What one step left the response in.
enum Step {
    /// Waiting (for the client to take bytes or the origin to send).
    Wait(bool),
    /// Sent in full: the plain path ends the response.
    Complete,
    /// Ended (cut); the connection is finishing.
    Cut,
}

impl<P: ProxyHttp> Conn<P> {
    /// One step of a response whose body the plugins see; true on progress.
    pub(super) fn plugin_body_step(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Some(mut pb) = self.plugin_body.take() else {
            return false;
        };
        match self.plugin_body_run(cx, &mut pb) {
            Step::Wait(moved) => {
                self.plugin_body = Some(pb);
                moved
            }
            Step::Cut => true,
            Step::Complete => {
                // The contexts end with the body (on_done, on_log); the
                // plain path does the rest with nothing left to stream.
                self.end_plugins(cx);
                if let Phase::StreamResponse { body, .. } = &mut self.phase {
                    *body = Body::Done;
                }
                self.stream_response_step(cx);
                true
            }
        }
    }

    fn plugin_body_run(&mut self, cx: &mut Ctx<'_, P>, pb: &mut PluginBody) -> Step {
        // The head first.
        let (flushed, mut moved) = self.flush_to_client(cx);
        if !flushed {
            return Step::Wait(moved);
        }
        loop {
            if pb.pending() {
                let client = &mut cx.net.stream(self.client);
                let n = self.io.stream.send(client, &pb.out[pb.sent..]);
                pb.sent += n;
                moved |= n > 0;
                if pb.pending() {
                    return Step::Wait(moved);
                }
            }
            pb.out.clear();
            pb.sent = 0;
            if pb.ended {
                return Step::Complete;
            }
            moved |= self.fill_from_upstream(cx) > 0;
            let upstream_open = self.upstream_may_recv(cx);
            let Phase::StreamResponse { body, .. } = &mut self.phase else {
                unreachable!("plugin body outside a streamed response")
            };
            let avail = self.bufs.from_upstream.filled();
            let window = &avail[..avail.len().min(STEP)];
            pb.payload.clear();
            let (take, done) = match body {
                Body::Done => (0, true),
                Body::Length(n) => {
                    let t = (*n).min(window.len() as u64) as usize;
                    *n -= t as u64;
                    pb.payload.extend_from_slice(&window[..t]);
                    (t, *n == 0)
                }
                Body::Chunked(dec) => match dec.feed_with(window, |d| {
                    pb.payload.extend_from_slice(d);
                }) {
                    Ok(t) => (t, dec.is_done()),
                    Err(e) => {
                        cx.stats.upstream_errors += 1;
                        tracing::debug!(error = %ProxyError::BadResponseBody(e), "aborting response");
                        self.finish(cx, true);
                        return Step::Cut;
                    }
                },
                Body::UntilClose => {
                    pb.payload.extend_from_slice(window);
                    (window.len(), !upstream_open && avail.len() == window.len())
                }
            };
            if take == 0 && !done {
                if !upstream_open && self.bufs.from_upstream.is_empty() {
                    // The origin closed before the body was complete.
                    cx.stats.upstream_errors += 1;
                    self.finish(cx, true);
                    return Step::Cut;
                }
                return Step::Wait(moved);
            }
            self.bufs.from_upstream.consume(take);
            if !pb.payload.is_empty() {
                cx.phases
                    .response_body_filter(&pb.payload, false, &mut self.pctx);
            }
            pb.data.clear();
            let fed = pb.chain.feed(
                cx.plugins,
                &self.rewrite.plugin,
                &pb.payload,
                done,
                cx.now,
                &mut pb.data,
                cx.stats,
            );
            if fed.is_err() {
                // The head is out: the client sees the body cut.
                self.finish(cx, true);
                return Step::Cut;
            }
            if pb.chunked {
                if !pb.data.is_empty() {
                    let _ = write!(pb.out, "{:x}\r\n", pb.data.len());
                    pb.out.extend_from_slice(&pb.data);
                    pb.out.extend_from_slice(b"\r\n");
                }
                if done {
                    pb.out.extend_from_slice(b"0\r\n\r\n");
                }
            } else {
                pb.out.extend_from_slice(&pb.data);
            }
            pb.ended = done;
            moved = true;
        }
    }
}
