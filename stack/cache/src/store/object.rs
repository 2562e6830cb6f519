//! A stored object: immutable metadata plus a body that may still be
//! arriving. Readers of an in-progress body get each chunk as soon as the
//! writer appends it; once complete the chunk list is frozen and read
//! without a lock.

use std::collections::VecDeque;
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
    /// The variant key's bytes (the request's values of the `Vary` names):
    /// a lookup compares them, so a variant-hash collision is a miss.
    pub(crate) variant: Arc<[u8]>,
    /// A purge epoch no purge before which reaches this object (read
    /// before it was stored; carried over by a 304 refresh): the disk tier
    /// checks the purges since then before it keeps a copy.
    pub(crate) epoch: u64,
}

impl Object {
    pub(crate) fn new(meta: CacheMeta, body: Arc<Body>, variant: Arc<[u8]>, epoch: u64) -> Self {
        Object {
            meta,
            body,
            light_purged: AtomicBool::new(false),
            variant,
            epoch,
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
        BodyReader::new(Arc::clone(&self.body))
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

/// A free reader slot in `Live::cursors`.
const FREE: usize = usize::MAX;

#[derive(Debug)]
struct Live {
    /// Chunks not yet released; `chunks[0]` is chunk number `base`.
    chunks: VecDeque<Bytes>,
    base: usize,
    /// Body bytes appended in total.
    len: usize,
    /// Body bytes held in `chunks` now.
    held: usize,
    state: State,
    /// The object left the store: chunks every reader has read are
    /// released, and with no reader left nothing more is buffered.
    detached: bool,
    /// Next chunk of each reader registered while the body was in progress
    /// (`FREE`: slot unused).
    cursors: Vec<usize>,
    readers: usize,
}

/// The chunks of a complete body; `chunks[0]` is chunk number `base`
/// (non-zero only for a detached body whose first chunks were released).
#[derive(Debug)]
struct Frozen {
    base: usize,
    chunks: Box<[Bytes]>,
}

/// A body shared by its writer and any number of readers.
#[derive(Debug)]
pub(crate) struct Body {
    /// Set once at completion: the hit path reads it without locking.
    frozen: OnceLock<Frozen>,
    /// Chunks appended so far (a reader that sees no news skips the lock).
    appended: AtomicUsize,
    ended: AtomicBool,
    live: Mutex<Live>,
}

/// What became of an appended chunk (see [`crate::ObjectWriter::push`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Append {
    /// Stored with the object: keep feeding.
    Stored,
    /// The object left the store (evicted, replaced, purged, too large);
    /// its readers still get the chunk: keep feeding them.
    Streaming,
    /// As `Streaming`, but the slowest reader lags by more than the
    /// largest object size: the chunk was kept, pause feeding until the
    /// readers catch up ([`crate::ObjectWriter::buffered`]).
    Full,
    /// The object left the store and no reader is left: the chunk was
    /// dropped and the body aborted. Stop feeding (serve nobody from it).
    Detached,
}

impl Body {
    pub(crate) fn new() -> Self {
        Body {
            frozen: OnceLock::new(),
            appended: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            live: Mutex::new(Live {
                chunks: VecDeque::new(),
                base: 0,
                len: 0,
                held: 0,
                state: State::Writing,
                detached: false,
                cursors: Vec::new(),
                readers: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a chunk; `limit`: the most a detached body buffers for its
    /// slowest reader before asking the writer to pause.
    pub(crate) fn append(&self, chunk: Bytes, limit: usize) -> Append {
        let mut l = self.lock();
        if l.state != State::Writing {
            return Append::Detached;
        }
        if l.detached && l.readers == 0 {
            // Nobody can read it: buffering would only grow memory.
            drop(l);
            self.abort_unread();
            return Append::Detached;
        }
        l.len += chunk.len();
        l.held += chunk.len();
        l.chunks.push_back(chunk);
        self.appended
            .store(l.base + l.chunks.len(), Ordering::Release);
        if !l.detached {
            Append::Stored
        } else if l.held > limit {
            Append::Full
        } else {
            Append::Streaming
        }
    }

    /// The object left the store: from now on chunks are released once
    /// read. False if no reader is left (the body is aborted).
    pub(crate) fn detach(&self) -> bool {
        let mut l = self.lock();
        l.detached = true;
        release_read(&mut l);
        let readers = l.readers;
        drop(l);
        if readers == 0 {
            self.abort_unread();
        }
        readers > 0
    }

    /// Bytes held for readers that have not read them yet (detached) or
    /// for the stored object.
    pub(crate) fn held(&self) -> usize {
        self.lock().held
    }

    pub(crate) fn finish(&self) {
        let mut l = self.lock();
        if l.state == State::Writing {
            l.state = State::Done;
            // Readers find the chunks in `frozen` from now on (checked first).
            let chunks: Vec<Bytes> = std::mem::take(&mut l.chunks).into();
            let _ = self.frozen.set(Frozen {
                base: l.base,
                chunks: chunks.into_boxed_slice(),
            });
            l.held = 0;
            self.ended.store(true, Ordering::Release);
        }
    }

    /// Readers still get the chunks appended so far, then `Aborted`.
    pub(crate) fn abort(&self) {
        self.abort_inner(false)
    }

    /// Aborts and frees the chunks (nobody reads them).
    fn abort_unread(&self) {
        self.abort_inner(true)
    }

    fn abort_inner(&self, clear: bool) {
        let mut l = self.lock();
        if l.state == State::Writing {
            l.state = State::Aborted;
            if clear {
                l.base += l.chunks.len();
                l.chunks.clear();
                l.held = 0;
            }
            self.ended.store(true, Ordering::Release);
        }
    }

    fn register(&self) -> Option<usize> {
        if self.frozen.get().is_some() {
            return None;
        }
        let mut l = self.lock();
        // A detached body that released its start cannot serve a new
        // reader (it reads `Aborted`); it must not hold chunks back either.
        if l.state == State::Done || (l.detached && l.base > 0) {
            return None;
        }
        l.readers += 1;
        Some(match l.cursors.iter().position(|&c| c == FREE) {
            Some(i) => {
                l.cursors[i] = 0;
                i
            }
            None => {
                l.cursors.push(0);
                l.cursors.len() - 1
            }
        })
    }
}

/// Releases the chunks every registered reader has read (detached only).
fn release_read(l: &mut Live) {
    if !l.detached {
        return;
    }
    let min = l
        .cursors
        .iter()
        .copied()
        .filter(|&c| c != FREE)
        .min()
        .unwrap_or(usize::MAX);
    while l.base < min
        && let Some(c) = l.chunks.pop_front()
    {
        l.base += 1;
        l.held -= c.len();
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
    /// The writer gave up (upstream failed), or this reader started after
    /// a detached body released its first chunks: the response is truncated.
    Aborted,
}

/// Reads a body chunk by chunk, concurrently with its writer.
#[derive(Debug)]
pub struct BodyReader {
    body: Arc<Body>,
    next: usize,
    /// This reader's cursor slot while the body is in progress.
    slot: Option<usize>,
}

impl BodyReader {
    pub(crate) fn new(body: Arc<Body>) -> Self {
        let slot = body.register();
        BodyReader {
            body,
            next: 0,
            slot,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(body: Arc<Body>) -> Self {
        Self::new(body)
    }

    fn from_frozen(next: &mut usize, f: &Frozen) -> Read {
        if *next < f.base {
            return Read::Aborted;
        }
        match f.chunks.get(*next - f.base) {
            Some(c) => {
                *next += 1;
                Read::Chunk(c.clone())
            }
            None => Read::End,
        }
    }

    /// The next chunk, without blocking. A complete body costs no lock; an
    /// in-progress one a lock only when a chunk or the end has arrived.
    pub fn poll(&mut self) -> Read {
        if let Some(f) = self.body.frozen.get() {
            return Self::from_frozen(&mut self.next, f);
        }
        if self.body.appended.load(Ordering::Acquire) <= self.next
            && !self.body.ended.load(Ordering::Acquire)
        {
            return Read::Pending;
        }
        let body = Arc::clone(&self.body);
        let mut l = body.lock();
        if l.state == State::Done {
            // `finish` moved the chunks to `frozen` after this reader's
            // first look (it sets `frozen` before releasing the lock).
            drop(l);
            return match body.frozen.get() {
                Some(f) => Self::from_frozen(&mut self.next, f),
                None => Read::End,
            };
        }
        if self.next < l.base {
            return Read::Aborted;
        }
        if let Some(c) = l.chunks.get(self.next - l.base) {
            let c = c.clone();
            self.next += 1;
            if let Some(s) = self.slot {
                l.cursors[s] = self.next;
                release_read(&mut l);
            }
            return Read::Chunk(c);
        }
        match l.state {
            State::Aborted => Read::Aborted,
            _ => Read::Pending,
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

impl Drop for BodyReader {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            let mut l = self.body.lock();
            l.cursors[s] = FREE;
            l.readers -= 1;
            release_read(&mut l);
        }
    }
}
