//! A stored object: immutable metadata plus a body that may still be
//! arriving. Readers of an in-progress body get each chunk as soon as the
//! writer appends it; once complete the chunk list is frozen and read
//! without a lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::meta::CacheMeta;

/// One stored response. A 304 refresh makes a new `Object` with the new
/// metadata sharing the same body.
#[derive(Debug)]
pub struct Object {
    pub(crate) meta: CacheMeta,
    pub(crate) body: Arc<Body>,
    pub(crate) light_purged: AtomicBool,
}

impl Object {
    pub(crate) fn new(meta: CacheMeta, body: Arc<Body>) -> Self {
        Object {
            meta,
            body,
            light_purged: AtomicBool::new(false),
        }
    }

    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    /// A light purge marked this object stale.
    pub fn light_purged(&self) -> bool {
        self.light_purged.load(Ordering::Acquire)
    }

    /// A reader from the first chunk.
    pub fn reader(&self) -> BodyReader {
        BodyReader {
            body: Arc::clone(&self.body),
            next: 0,
        }
    }

    /// Whether the whole body has arrived.
    pub fn is_complete(&self) -> bool {
        self.body.frozen.get().is_some()
    }

    /// Body bytes stored so far.
    pub fn body_len(&self) -> usize {
        self.body.live.lock().unwrap_or_else(|e| e.into_inner()).len
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Writing,
    Done,
    Aborted,
}

#[derive(Debug)]
struct Live {
    chunks: Vec<Bytes>,
    len: usize,
    state: State,
}

/// A body shared by its writer and any number of readers.
#[derive(Debug)]
pub(crate) struct Body {
    /// Set once at completion: the hit path reads it without locking.
    frozen: OnceLock<Box<[Bytes]>>,
    /// Chunks appended so far (a reader that sees no news skips the lock).
    appended: AtomicUsize,
    ended: AtomicBool,
    live: Mutex<Live>,
}

impl Body {
    pub(crate) fn new() -> Self {
        Body {
            frozen: OnceLock::new(),
            appended: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            live: Mutex::new(Live {
                chunks: Vec::new(),
                len: 0,
                state: State::Writing,
            }),
        }
    }

    pub(crate) fn append(&self, chunk: Bytes) {
        let mut l = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if l.state != State::Writing {
            return;
        }
        l.len += chunk.len();
        l.chunks.push(chunk);
        self.appended.store(l.chunks.len(), Ordering::Release);
    }

    pub(crate) fn finish(&self) {
        let mut l = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if l.state == State::Writing {
            l.state = State::Done;
            // Readers find the chunks in `frozen` from now on (checked first).
            let chunks = std::mem::take(&mut l.chunks);
            let _ = self.frozen.set(chunks.into_boxed_slice());
            self.ended.store(true, Ordering::Release);
        }
    }

    pub(crate) fn abort(&self) {
        let mut l = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if l.state == State::Writing {
            l.state = State::Aborted;
            self.ended.store(true, Ordering::Release);
        }
    }
}

/// What a reader gets next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    Chunk(Bytes),
    /// Nothing new yet: poll again after the writer made progress.
    Pending,
    /// The whole body has been read.
    End,
    /// The writer gave up (upstream failed): the response is truncated.
    Aborted,
}

/// Reads a body chunk by chunk, concurrently with its writer.
#[derive(Debug)]
pub struct BodyReader {
    body: Arc<Body>,
    next: usize,
}

impl BodyReader {
    #[cfg(test)]
    pub(crate) fn for_test(body: Arc<Body>) -> Self {
        BodyReader { body, next: 0 }
    }

    /// The next chunk, without blocking. A complete body costs no lock; an
    /// in-progress one a lock only when a chunk or the end has arrived.
    pub fn poll(&mut self) -> Read {
        if let Some(all) = self.body.frozen.get() {
            return match all.get(self.next) {
                Some(c) => {
                    self.next += 1;
                    Read::Chunk(c.clone())
                }
                None => Read::End,
            };
        }
        if self.body.appended.load(Ordering::Acquire) <= self.next
            && !self.body.ended.load(Ordering::Acquire)
        {
            return Read::Pending;
        }
        let l = self.body.live.lock().unwrap_or_else(|e| e.into_inner());
        if l.state == State::Done {
            // `finish` moved the chunks to `frozen` after this reader's
            // first look (it sets `frozen` before releasing the lock).
            drop(l);
            return match self.body.frozen.get().and_then(|all| all.get(self.next)) {
                Some(c) => {
                    self.next += 1;
                    Read::Chunk(c.clone())
                }
                None => Read::End,
            };
        }
        if let Some(c) = l.chunks.get(self.next) {
            self.next += 1;
            return Read::Chunk(c.clone());
        }
        match l.state {
            State::Writing => Read::Pending,
            State::Done => Read::End,
            State::Aborted => Read::Aborted,
        }
    }

    /// Whether `poll` would return something other than `Pending` (one or
    /// two atomic loads): what a worker checks for its waiting readers.
    pub fn ready(&self) -> bool {
        self.body.frozen.get().is_some()
            || self.body.appended.load(Ordering::Acquire) > self.next
            || self.body.ended.load(Ordering::Acquire)
    }
}
