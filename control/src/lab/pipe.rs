//! One direction of the impairment relay: a preallocated frame pool and a
//! delay line (time-ordered queues) that apply an [`Impairment`]. Pure
//! logic over a caller's clock, so it is tested without sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::{Rng, SeedableRng};
use rand_xorshift::XorShiftRng;

use super::impair::Impairment;

/// Bytes per pool slot: an Ethernet frame with a VLAN tag fits.
pub const SLOT: usize = 2048;
const ETH_HLEN: usize = 14;

/// What one direction did (monotonic counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipeStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    pub queue_drops: u64,
    /// Frames larger than a slot (a GSO super-frame: offloads left on).
    pub oversize: u64,
    pub send_errors: u64,
    /// Frames the kernel dropped before the relay read them (socket full).
    pub socket_drops: u64,
}

impl PipeStats {
    pub fn fields(&self) -> [(&'static str, u64); 10] {
        [
            ("frames_in", self.frames_in),
            ("frames_out", self.frames_out),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("corrupted", self.corrupted),
            ("reordered", self.reordered),
            ("queue_drops", self.queue_drops),
            ("oversize", self.oversize),
            ("send_errors", self.send_errors),
            ("socket_drops", self.socket_drops),
        ]
    }
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    due: Instant,
    slot: u32,
    len: u32,
}

pub struct Pipe {
    imp: Impairment,
    buf: Vec<u8>,
    free: Vec<u32>,
    /// Frames in order: due times never decrease (jitter keeps order).
    line: VecDeque<Queued>,
    /// Reordered frames, held back beyond their normal due time.
    late: VecDeque<Queued>,
    last_due: Option<Instant>,
    /// When the rate limiter's link is free again.
    next_free: Option<Instant>,
    rng: XorShiftRng,
    pub stats: PipeStats,
}

impl Pipe {
    pub fn new(imp: Impairment, seed: u64) -> Pipe {
        let n = imp.limit;
        Pipe {
            buf: vec![0; n * SLOT],
            free: (0..n as u32).rev().collect(),
            line: VecDeque::with_capacity(n),
            late: VecDeque::with_capacity(n),
            imp,
            last_due: None,
            next_free: None,
            rng: XorShiftRng::seed_from_u64(seed),
            stats: PipeStats::default(),
        }
    }

    /// A new impairment; frames already queued keep their due times. A
    /// different limit resizes the pool, which drops what is queued.
    pub fn set(&mut self, imp: Impairment) {
        if imp.limit != self.imp.limit {
            let (stats, seed) = (self.stats, self.rng.next_u64());
            *self = Pipe::new(imp, seed);
            self.stats = stats;
        } else {
            self.imp = imp;
        }
    }

    /// A free slot to receive a frame into, or None when the queue is full
    /// (receive into a scratch buffer and call [`Pipe::full`]).
    pub fn slot(&mut self) -> Option<(u32, &mut [u8])> {
        let s = *self.free.last()?;
        let i = s as usize * SLOT;
        Some((s, &mut self.buf[i..i + SLOT]))
    }

    /// A frame that found the queue full.
    pub fn full(&mut self) {
        self.stats.frames_in += 1;
        self.stats.queue_drops += 1;
    }

    /// A frame too large for a slot.
    pub fn oversize(&mut self) {
        self.stats.frames_in += 1;
        self.stats.oversize += 1;
    }

    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits → [0, 1).
        p > 0.0 && ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Takes the frame just received into `slot` (from [`Pipe::slot`]):
    /// lost, or queued (maybe corrupted, duplicated, held back).
    pub fn admit(&mut self, now: Instant, slot: u32, len: usize) {
        debug_assert_eq!(self.free.last(), Some(&slot));
        self.stats.frames_in += 1;
        if self.chance(self.imp.loss) {
            self.stats.lost += 1;
            return;
        }
        self.free.pop();
        let dup = self.chance(self.imp.dup);
        if self.chance(self.imp.corrupt) && self.corrupt(slot, len) {
            self.stats.corrupted += 1;
        }
        self.enqueue(now, slot, len);
        if dup {
            if let Some(&copy) = self.free.last() {
                self.free.pop();
                let (a, b) = (slot as usize * SLOT, copy as usize * SLOT);
                self.buf.copy_within(a..a + len, b);
                self.stats.duplicated += 1;
                self.enqueue(now, copy, len);
            } else {
                self.stats.queue_drops += 1;
            }
        }
    }

    fn enqueue(&mut self, now: Instant, slot: u32, len: usize) {
        let imp = &self.imp;
        let mut due = now + imp.delay;
        if !imp.jitter.is_zero() {
            let j = imp.jitter.as_nanos() as u64;
            let off = self.rng.next_u64() % (2 * j + 1);
            due = (now + imp.delay + Duration::from_nanos(off))
                .checked_sub(imp.jitter)
                .unwrap_or(now)
                .max(now);
        }
        if self.chance(self.imp.reorder) {
            // Held back: later frames overtake it.
            self.stats.reordered += 1;
            let q = Queued {
                due: due + self.imp.reorder_hold,
                slot,
                len: len as u32,
            };
            // Keep `late` ordered: a frame behind one held longer waits for it.
            let q = match self.late.back() {
                Some(b) if b.due > q.due => Queued { due: b.due, ..q },
                _ => q,
            };
            self.late.push_back(q);
            return;
        }
        if let Some(last) = self.last_due {
            due = due.max(last);
        }
        // Serialization time of the frame on the wire (with preamble, FCS
        // and gap, 24 bytes); no rate (0): none.
        let bits = (len as u64 + 24) * 8;
        if let Some(ns) = (bits * 1_000_000_000).checked_div(self.imp.rate) {
            let start = self.next_free.map_or(due, |f| f.max(due));
            let t = Duration::from_nanos(ns);
            self.next_free = Some(start + t);
            due = start + t;
        }
        self.last_due = Some(due);
        self.line.push_back(Queued {
            due,
            slot,
            len: len as u32,
        });
    }

    /// Flips one random bit of the IP packet in the frame (after the
    /// Ethernet header, within the IP length so a checksum covers it).
    /// Non-IP frames (ARP has no checksum) are left alone: false.
    fn corrupt(&mut self, slot: u32, len: usize) -> bool {
        let f = &self.buf[slot as usize * SLOT..][..len];
        if len < ETH_HLEN + 20 {
            return false;
        }
        let ip_len = match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => u16::from_be_bytes([f[16], f[17]]) as usize,
            0x86dd => 40 + u16::from_be_bytes([f[18], f[19]]) as usize,
            _ => return false,
        };
        let end = (ETH_HLEN + ip_len).min(len);
        if end <= ETH_HLEN {
            return false;
        }
        let bit = self.rng.next_u64() as usize % ((end - ETH_HLEN) * 8);
        self.buf[slot as usize * SLOT + ETH_HLEN + bit / 8] ^= 1 << (bit % 8);
        true
    }

    /// When the next queued frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.line.front(), self.late.front()) {
            (Some(a), Some(b)) => Some(a.due.min(b.due)),
            (a, b) => a.or(b).map(|q| q.due),
        }
    }

    pub fn queued(&self) -> usize {
        self.line.len() + self.late.len()
    }

    /// Sends every frame due by `now` with `send` (false: a send error,
    /// counted; the frame is dropped either way).
    pub fn drain_due(&mut self, now: Instant, mut send: impl FnMut(&[u8]) -> bool) {
        loop {
            let from_late = match (self.line.front(), self.late.front()) {
                (Some(a), Some(b)) => b.due < a.due,
                (None, Some(_)) => true,
                _ => false,
            };
            let q = if from_late {
                &mut self.late
            } else {
                &mut self.line
            };
            match q.front() {
                Some(f) if f.due <= now => {}
                _ => return,
            }
            let f = q.pop_front().expect("front checked");
            let frame = &self.buf[f.slot as usize * SLOT..][..f.len as usize];
            if send(frame) {
                self.stats.frames_out += 1;
            } else {
                self.stats.send_errors += 1;
            }
            self.free.push(f.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::impair::parse_patch;

    fn pipe(spec: &str) -> Pipe {
        let mut imp = Impairment::default();
        imp.apply(&parse_patch(spec).unwrap());
        Pipe::new(imp, 7)
    }

    /// An IPv4 frame whose payload is `id` (so order can be checked).
    fn frame(id: u32) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[16..18].copy_from_slice(&46u16.to_be_bytes());
        f[40..44].copy_from_slice(&id.to_be_bytes());
        f
    }

    fn push(p: &mut Pipe, now: Instant, f: &[u8]) {
        match p.slot() {
            Some((s, buf)) => {
                buf[..f.len()].copy_from_slice(f);
                p.admit(now, s, f.len());
            }
            None => p.full(),
        }
    }

    fn run(p: &mut Pipe, n: u32, step: Duration) -> Vec<Vec<u8>> {
        let t0 = Instant::now();
        let mut out = vec![];
        for i in 0..n {
            let now = t0 + step * i;
            push(p, now, &frame(i));
            p.drain_due(now, |f| {
                out.push(f.to_vec());
                true
            });
        }
        p.drain_due(t0 + Duration::from_secs(60), |f| {
            out.push(f.to_vec());
            true
        });
        out
    }

    fn ids(out: &[Vec<u8>]) -> Vec<u32> {
        out.iter()
            .map(|f| u32::from_be_bytes(f[40..44].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn no_impairment_forwards_everything_in_order() {
        let mut p = pipe("");
        let out = run(&mut p, 1000, Duration::from_micros(10));
        assert_eq!(ids(&out), (0..1000).collect::<Vec<_>>());
        assert_eq!(p.stats.frames_out, 1000);
    }

    #[test]
    fn loss_dup_corrupt_and_reorder_happen_at_about_their_rates() {
        let mut p = pipe("loss=5%,dup=5%,corrupt=5%,reorder=5%,delay=1ms,jitter=1ms");
        let out = run(&mut p, 20_000, Duration::from_micros(10));
        let s = p.stats;
        for (name, v) in [
            ("lost", s.lost),
            ("duplicated", s.duplicated),
            ("corrupted", s.corrupted),
            ("reordered", s.reordered),
        ] {
            assert!((700..1300).contains(&v), "{name} {v} of 20000: {s:?}");
        }
        assert_eq!(s.frames_out as usize, out.len());
        assert_eq!(s.frames_in - s.lost + s.duplicated, s.frames_out);
        let ids = ids(&out);
        let inversions = ids.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 200, "{inversions}");
        // Corrupted frames differ from what was sent in exactly one bit.
        let flipped = out
            .iter()
            .filter(|f| {
                let id = u32::from_be_bytes(f[40..44].try_into().unwrap());
                let want = frame(id);
                let bits: u32 = f.iter().zip(&want).map(|(a, b)| (a ^ b).count_ones()).sum();
                assert!(bits <= 1);
                bits == 1
            })
            .count();
        // A flip inside the id bytes makes the frame look like another one.
        assert!(flipped as u64 <= s.corrupted + s.duplicated);
        assert!(flipped > 500, "{flipped} {s:?}");
    }

    #[test]
    fn jitter_keeps_order_and_delay_holds_frames() {
        let mut p = pipe("delay=20ms,jitter=10ms");
        let t0 = Instant::now();
        for i in 0..100 {
            push(&mut p, t0, &frame(i));
        }
        let mut out = vec![];
        p.drain_due(t0 + Duration::from_millis(9), |f| {
            out.push(f.to_vec());
            true
        });
        assert!(out.is_empty());
        p.drain_due(t0 + Duration::from_millis(31), |f| {
            out.push(f.to_vec());
            true
        });
        assert_eq!(ids(&out), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn the_queue_limit_drops_and_counts() {
        let mut p = pipe("delay=100ms,limit=10");
        let t0 = Instant::now();
        for i in 0..15 {
            push(&mut p, t0, &frame(i));
        }
        assert_eq!(p.queued(), 10);
        assert_eq!(p.stats.queue_drops, 5);
    }

    #[test]
    fn the_rate_limit_spaces_frames() {
        // 60-byte frames + 24 = 672 bits; at 672 kbit/s, 1 ms each.
        let mut p = pipe("rate=672kbit");
        let t0 = Instant::now();
        for i in 0..10 {
            push(&mut p, t0, &frame(i));
        }
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(1)));
        let mut n = 0;
        p.drain_due(t0 + Duration::from_micros(5500), |_| {
            n += 1;
            true
        });
        assert_eq!(n, 5);
    }
}
