//! AF_PACKET backend: a TPACKET_V3 rx ring written directly on `libc`, and a
//! pre-allocated `sendmmsg` batch for tx. The fallback that runs anywhere.
//!
//! RX: the kernel fills blocks of `block_size` bytes; we walk a block's frames,
//! hand each to the callback and give the block back when all its frames were
//! delivered (a burst can stop mid-block and resume there).
//!
//! TX: `tx_frame` copies into slot `i` of a pre-allocated batch buffer and
//! `tx_flush` sends the whole batch with one `sendmmsg(MSG_DONTWAIT)`. With
//! `PACKET_QDISC_BYPASS` each frame goes straight to the driver.
//!
//! Several queues: each socket joins a fanout group named after the ifindex,
//! type `PACKET_FANOUT_QM`; the kernel delivers a frame to the member at index
//! `rx_queue % members` in join order, so open queues in ascending order.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::io::{BackendKind, IoStats, PacketIo};
use crate::io_error::{IoError, ifindex, poll_readable};

/// Configuration of one AF_PACKET socket.
#[derive(Debug, Clone)]
pub struct AfPacketConfig {
    pub iface: String,
    /// This socket's index in the fanout group (the NIC queue it stands for).
    pub queue: u32,
    /// Sockets in the fanout group; 1 = no fanout.
    pub queues: u32,
    /// Bytes per ring block (page multiple, power of two), e.g. 1 MiB.
    pub block_size: u32,
    pub block_count: u32,
    /// Largest frame delivered or sent; bigger ones are counted and skipped.
    pub frame_size: u32,
    /// A partly filled block is handed over after this many milliseconds.
    pub block_timeout_ms: u32,
}

impl AfPacketConfig {
    /// Defaults for `iface`/`queue` of `queues`: 16 blocks of 1 MiB, 2048-byte frames, 1 ms.
    pub fn new(iface: impl Into<String>, queue: u32, queues: u32) -> Self {
        AfPacketConfig {
            iface: iface.into(),
            queue,
            queues,
            block_size: 1 << 20,
            block_count: 16,
            frame_size: 2048,
            block_timeout_ms: 1,
        }
    }
}

const TPACKET_V3: libc::c_int = 2;
const ETH_P_ALL: u16 = 0x0003;
/// Frames a single `tx_flush` can carry.
const TX_BATCH: usize = 256;
/// Transient per-message send errors tolerated in one flush before the rest is dropped.
const TX_SKIP_LIMIT: u32 = 8;
/// Bursts between two reads of PACKET_STATISTICS.
const STATS_EVERY: u32 = 1024;
/// Offset of `struct sockaddr_ll` behind a `tpacket3_hdr` (TPACKET_ALIGN(sizeof hdr)).
const SLL_OFFSET: usize = (std::mem::size_of::<libc::tpacket3_hdr>() + libc::TPACKET_ALIGNMENT - 1)
    & !(libc::TPACKET_ALIGNMENT - 1);

/// The mmap'ed rx ring.
struct Ring {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping created in `open`; nothing refers to it
        // after the socket is dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Pre-allocated tx batch: `TX_BATCH` slots of `frame_size` bytes, with the
/// iovecs and mmsghdrs pointing into them built once at open.
struct TxBatch {
    buf: Box<[u8]>,
    iov: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    len: usize,
}

/// An AF_PACKET TPACKET_V3 socket on one interface (one fanout member).
pub struct AfPacketSocket {
    ring: Ring,
    fd: OwnedFd,
    block_size: usize,
    block_count: usize,
    frame_size: usize,
    /// Block being walked (or next to be checked).
    cur_block: usize,
    /// Whether `cur_block` is ours (status USER) and partly delivered.
    in_block: bool,
    pkts_left: u32,
    next_off: usize,
    tx: TxBatch,
    stats: IoStats,
    /// Kernel drops accumulated from PACKET_STATISTICS (which resets on read).
    drops: Cell<u64>,
    bursts: u32,
    rx_oversize: u64,
    tx_oversize: u64,
    iface: String,
    queue: u32,
}

// SAFETY: the raw pointers inside (`Ring`, the iovec/mmsghdr arrays) point only
// into memory owned by this value (the mapping, `TxBatch::buf`, `TxBatch::iov`),
// which moves with it; nothing is shared with another thread.
unsafe impl Send for AfPacketSocket {}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: &T,
    iface: &str,
    queue: u32,
    what: &'static str,
) -> Result<(), IoError> {
    // SAFETY: `val` points to a live `T` of exactly the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(IoError::last_os(iface, queue, what));
    }
    Ok(())
}

impl AfPacketSocket {
    /// Opens the socket, maps the rx ring, binds to the interface (ETH_P_ALL)
    /// and, with `queues > 1`, joins the interface's fanout group.
    pub fn open(cfg: &AfPacketConfig) -> Result<Self, IoError> {
        let (iface, queue) = (cfg.iface.as_str(), cfg.queue);
        // SAFETY: plain sysconf query.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
        if !cfg.block_size.is_power_of_two() || cfg.block_size < page {
            return Err(IoError::config(
                iface,
                queue,
                format!(
                    "block_size {} (must be a power of two >= the page size {page})",
                    cfg.block_size
                ),
            ));
        }
        if cfg.frame_size < 128
            || !cfg
                .frame_size
                .is_multiple_of(libc::TPACKET_ALIGNMENT as u32)
            || cfg.frame_size > cfg.block_size
        {
            return Err(IoError::config(
                iface,
                queue,
                format!(
                    "frame_size {} (must be a multiple of 16, >= 128 and <= block_size)",
                    cfg.frame_size
                ),
            ));
        }
        if cfg.block_count == 0 || cfg.queues == 0 || cfg.queue >= cfg.queues {
            return Err(IoError::config(
                iface,
                queue,
                format!(
                    "block_count {} / queue {} of {} queues",
                    cfg.block_count, cfg.queue, cfg.queues
                ),
            ));
        }
        let ifidx = ifindex(iface, queue)?;

        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(IoError::last_os(iface, queue, "AF_PACKET socket"));
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sfd = fd.as_raw_fd();

        setsockopt(
            sfd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &TPACKET_V3,
            iface,
            queue,
            "PACKET_VERSION TPACKET_V3",
        )?;
        let req = libc::tpacket_req3 {
            tp_block_size: cfg.block_size,
            tp_block_nr: cfg.block_count,
            tp_frame_size: cfg.frame_size,
            tp_frame_nr: (cfg.block_size / cfg.frame_size) * cfg.block_count,
            tp_retire_blk_tov: cfg.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            sfd,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            iface,
            queue,
            "PACKET_RX_RING setup",
        )?;
        let len = cfg.block_size as usize * cfg.block_count as usize;
        // SAFETY: maps the ring the kernel just allocated for `sfd`; the
        // length is exactly block_size * block_count as requested.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                sfd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(IoError::last_os(iface, queue, "mmap of the rx ring"));
        }
        let ring = Ring {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL without MAP_FAILED"),
            len,
        };
        setsockopt(
            sfd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
            iface,
            queue,
            "PACKET_QDISC_BYPASS",
        )?;

        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifidx as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its exact size.
        let rc = unsafe {
            libc::bind(
                sfd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(IoError::last_os(iface, queue, "bind to the interface"));
        }
        if cfg.queues > 1 {
            let group = ifidx & 0xffff;
            let arg: u32 = group | (libc::PACKET_FANOUT_QM << 16);
            setsockopt(
                sfd,
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                &arg,
                iface,
                queue,
                "PACKET_FANOUT (QM) join",
            )?;
        }

        let frame_size = cfg.frame_size as usize;
        let mut buf = vec![0u8; TX_BATCH * frame_size].into_boxed_slice();
        let mut iov: Box<[libc::iovec]> = (0..TX_BATCH)
            .map(|i| libc::iovec {
                // SAFETY: slot `i` starts inside `buf` (i < TX_BATCH).
                iov_base: unsafe { buf.as_mut_ptr().add(i * frame_size) }.cast(),
                iov_len: 0,
            })
            .collect();
        let msgs: Box<[libc::mmsghdr]> = (0..TX_BATCH)
            .map(|i| {
                // SAFETY: msghdr/mmsghdr are plain old data; zero is valid.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: index `i` is inside `iov`.
                m.msg_hdr.msg_iov = unsafe { iov.as_mut_ptr().add(i) };
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();

        tracing::info!(
            iface,
            queue,
            queues = cfg.queues,
            blocks = cfg.block_count,
            block_size = cfg.block_size,
            "AF_PACKET TPACKET_V3 socket bound"
        );
        Ok(AfPacketSocket {
            ring,
            fd,
            block_size: cfg.block_size as usize,
            block_count: cfg.block_count as usize,
            frame_size,
            cur_block: 0,
            in_block: false,
            pkts_left: 0,
            next_off: 0,
            tx: TxBatch {
                buf,
                iov,
                msgs,
                len: 0,
            },
            stats: IoStats::default(),
            drops: Cell::new(0),
            bursts: 0,
            rx_oversize: 0,
            tx_oversize: 0,
            iface: cfg.iface.clone(),
            queue,
        })
    }

    /// The socket fd (for poll/epoll by the caller).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Received frames skipped because they exceed the frame size (or were truncated).
    pub fn rx_oversize(&self) -> u64 {
        self.rx_oversize
    }

    /// Frames refused by `tx_frame` because they exceed the frame size.
    pub fn tx_oversize(&self) -> u64 {
        self.tx_oversize
    }

    /// Adds the kernel's drop counter (reset by each read) to `drops`.
    fn refresh_drops(&self) {
        // SAFETY: tpacket_stats_v3 is plain old data; zero is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` has `len` writable bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            self.drops.set(self.drops.get() + u64::from(st.tp_drops));
        }
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        let off = block * self.block_size
            + std::mem::offset_of!(libc::tpacket_block_desc, hdr)
            + std::mem::offset_of!(libc::tpacket_hdr_v1, block_status);
        // SAFETY: `block < block_count`, so the u32 lies inside the ring; it is
        // 4-byte aligned (blocks are page aligned, the offset is 8), and the
        // kernel only ever accesses it as a 32-bit word.
        unsafe { AtomicU32::from_ptr(self.ring.ptr.as_ptr().add(off).cast()) }
    }

    /// Reads a u32 field of the current block's header.
    fn block_u32(&self, field_off: usize) -> u32 {
        let off = self.cur_block * self.block_size
            + std::mem::offset_of!(libc::tpacket_block_desc, hdr)
            + field_off;
        // SAFETY: inside the current block, which the kernel handed to us
        // (status USER observed with acquire), so it is not written meanwhile.
        unsafe { self.ring.ptr.as_ptr().add(off).cast::<u32>().read() }
    }
}

impl PacketIo for AfPacketSocket {
    fn kind(&self) -> BackendKind {
        BackendKind::AfPacket
    }

    fn rx_burst(&mut self, max: usize, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        self.bursts = self.bursts.wrapping_add(1);
        if self.bursts.is_multiple_of(STATS_EVERY) {
            self.refresh_drops();
        }
        let mut n = 0;
        // Each iteration consumes a block or stops: bounded by block_count + 1.
        for _ in 0..=self.block_count {
            if n >= max {
                break;
            }
            if !self.in_block {
                let status = self.block_status(self.cur_block).load(Ordering::Acquire);
                if status & libc::TP_STATUS_USER == 0 {
                    break;
                }
                self.pkts_left =
                    self.block_u32(std::mem::offset_of!(libc::tpacket_hdr_v1, num_pkts));
                self.next_off = self.block_u32(std::mem::offset_of!(
                    libc::tpacket_hdr_v1,
                    offset_to_first_pkt
                )) as usize;
                self.in_block = true;
            }
            let base = self.cur_block * self.block_size;
            while self.pkts_left > 0 && n < max {
                let off = self.next_off;
                if off + SLL_OFFSET + std::mem::size_of::<libc::sockaddr_ll>() > self.block_size {
                    // Corrupt offset: give up on the rest of this block.
                    self.pkts_left = 0;
                    break;
                }
                // SAFETY: `off` plus the header and sockaddr_ll lie inside the
                // current block (checked above), which belongs to us until we
                // set its status back to KERNEL; the kernel aligns frame
                // headers to TPACKET_ALIGNMENT (16).
                let (hdr, pkttype) = unsafe {
                    let p = self.ring.ptr.as_ptr().add(base + off);
                    let hdr = p.cast::<libc::tpacket3_hdr>().read();
                    let sll = p.add(SLL_OFFSET).cast::<libc::sockaddr_ll>().read();
                    (hdr, sll.sll_pkttype)
                };
                let snap = hdr.tp_snaplen as usize;
                let start = off + hdr.tp_mac as usize;
                if pkttype == libc::PACKET_OUTGOING {
                    // Our own (or a sibling's) transmission looping back.
                } else if snap > self.frame_size
                    || hdr.tp_snaplen != hdr.tp_len
                    || start + snap > self.block_size
                {
                    self.rx_oversize += 1;
                } else {
                    // SAFETY: `start..start+snap` is inside the current block
                    // (checked), owned by us until the block is released below,
                    // after the callback returned.
                    let frame = unsafe {
                        std::slice::from_raw_parts(self.ring.ptr.as_ptr().add(base + start), snap)
                    };
                    on_frame(frame);
                    n += 1;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += snap as u64;
                }
                self.pkts_left -= 1;
                self.next_off = off + hdr.tp_next_offset as usize;
            }
            if self.pkts_left == 0 {
                self.block_status(self.cur_block)
                    .store(libc::TP_STATUS_KERNEL, Ordering::Release);
                self.in_block = false;
                self.cur_block = (self.cur_block + 1) % self.block_count;
            }
        }
        Ok(n)
    }

    fn tx_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.frame_size {
            // Never fits: dropped and counted, not offered again.
            self.tx_oversize += 1;
            return true;
        }
        let i = self.tx.len;
        if i >= TX_BATCH {
            self.stats.tx_ring_full += 1;
            return false;
        }
        let slot = i * self.frame_size;
        self.tx.buf[slot..slot + frame.len()].copy_from_slice(frame);
        self.tx.iov[i].iov_len = frame.len();
        self.tx.len = i + 1;
        true
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        let queued = self.tx.len;
        let mut done = 0;
        let mut skips = 0;
        let mut result = Ok(());
        while done < queued {
            self.stats.kicks += 1;
            // SAFETY: `msgs[done..queued]` are initialised mmsghdrs whose iovecs
            // point into `buf` slots holding `iov_len` valid bytes; the kernel
            // only reads them (and writes `msg_len`).
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    self.tx.msgs.as_mut_ptr().add(done),
                    (queued - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                for i in done..done + rc as usize {
                    self.stats.tx_bytes += self.tx.iov[i].iov_len as u64;
                }
                self.stats.tx_frames += rc as u64;
                done += rc as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            let transient = matches!(
                err.raw_os_error(),
                Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR)
            );
            if transient && skips < TX_SKIP_LIMIT {
                // The message at `done` could not be queued: drop it, go on.
                skips += 1;
                self.stats.tx_ring_full += 1;
                done += 1;
                continue;
            }
            self.stats.tx_ring_full += (queued - done) as u64;
            if !transient {
                result = Err(io::Error::new(
                    err.kind(),
                    format!(
                        "{} queue {}: AF_PACKET sendmmsg: {err}",
                        self.iface, self.queue
                    ),
                ));
            }
            break;
        }
        self.tx.len = 0;
        result
    }

    fn wait(&mut self, timeout: Duration, wake: RawFd) -> io::Result<bool> {
        if self.in_block
            || self.block_status(self.cur_block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
        {
            return Ok(false);
        }
        poll_readable(&[self.fd.as_raw_fd(), wake], timeout).map(|ready| ready & 2 != 0)
    }

    fn stats(&self) -> IoStats {
        self.refresh_drops();
        let mut s = self.stats;
        s.rx_dropped = self.drops.get();
        s
    }
}
