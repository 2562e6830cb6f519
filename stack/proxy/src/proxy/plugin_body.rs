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
    pub(crate) out: Vec<u8>,
    pub(crate) sent: usize,
    /// The origin's payload of one step.
    payload: Vec<u8>,
    /// Chunked to the client (else as the plugins left it: close-delimited
    /// on HTTP/1.0, DATA frames on HTTP/2).
    chunked: bool,
    /// The last piece went through the plugins: once `out` is sent, the
    /// response is complete.
    pub(crate) ended: bool,
    /// HTTP/2: END_STREAM went out.
    pub(crate) end_sent: bool,
}

/// What [`PluginBody::pull`] did.
pub(crate) enum Pulled {
    /// Nothing new from the origin yet.
    Nothing,
    /// A piece went through the plugins (its output is in `out`).
    Piece,
    /// The origin's body is broken (bad chunking) or ended short.
    Broken,
    /// A plugin that is not `fail_open` failed.
    PluginFailed,
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

    /// Takes up to [`STEP`] of the origin's body from `from_upstream`
    /// (framing off), hands it through the plugins and frames what they
    /// pass on into `out` (which must be sent: it is replaced).
        pub(crate) fn pull<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        edits: &crate::plugin_phase::PluginEdits,
        body: &mut Body,
        from_upstream: &mut crate::http::ByteBuf,
        upstream_open: bool,
        pctx: &mut P::Ctx,
    ) -> Pulled {
        self.out.clear();
        self.sent = 0;
        let avail = from_upstream.filled();
        let window = &avail[..avail.len().min(STEP)];
        self.payload.clear();
        let payload = &mut self.payload;
        let (take, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(window.len() as u64) as usize;
                *n -= t as u64;
                payload.extend_from_slice(&window[..t]);
                (t, *n == 0)
            }
            Body::Chunked(dec) => match dec.feed_with(window, |d| payload.extend_from_slice(d)) {
                Ok(t) => (t, dec.is_done()),
                Err(e) => {
                    cx.stats.upstream_errors += 1;
                    tracing::debug!(error = %ProxyError::BadResponseBody(e), "aborting response");
                    return Pulled::Broken;
                }
            },
            Body::UntilClose => {
                payload.extend_from_slice(window);
                (window.len(), !upstream_open && avail.len() == window.len())
            }
        };
        if take == 0 && !done {
            if !upstream_open && from_upstream.is_empty() {
                // The origin closed before the body was complete.
                cx.stats.upstream_errors += 1;
                return Pulled::Broken;
            }
            return Pulled::Nothing;
        }
        from_upstream.consume(take);
        if !self.payload.is_empty() {
            cx.phases.response_body_filter(&self.payload, false, pctx);
        }
        let Ok(data) = self
            .chain
            .feed(cx.plugins, edits, &self.payload, done, cx.now, cx.stats)
        else {
            return Pulled::PluginFailed;
        };
        if self.chunked {
            if !data.is_empty() {
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            }
            if done {
                self.out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            self.out.extend_from_slice(data);
        }
        self.ended = done;
        Pulled::Piece
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
            if pb.ended {
                return Step::Complete;
            }
            moved |= self.fill_from_upstream(cx) > 0;
            let upstream_open = self.upstream_may_recv(cx);
            let Phase::StreamResponse { body, .. } = &mut self.phase else {
                unreachable!("plugin body outside a streamed response")
            };
            match pb.pull(
                cx,
                &self.rewrite.plugin,
                body,
                &mut self.bufs.from_upstream,
                upstream_open,
                &mut self.pctx,
            ) {
                Pulled::Nothing => return Step::Wait(moved),
                Pulled::Piece => moved = true,
                // The head is out: the client sees the body cut.
                Pulled::Broken | Pulled::PluginFailed => {
                    self.finish(cx, true);
                    return Step::Cut;
                }
            }
        }
    }
}
