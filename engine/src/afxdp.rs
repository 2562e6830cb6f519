//! AF_XDP backend on `xdpilone` (pure Rust, no libbpf/libxdp).
//!
//! One socket per NIC queue, with its own UMEM. Half of the UMEM frames belong
//! to the receive side (they cycle fill ring → rx ring → callback → fill ring),
//! the other half to the transmit side (free list → tx ring → completion ring →
//! free list). Everything is allocated in [`AfXdpSocket::open`]; the per-frame
//! path only touches the rings and the pre-sized vectors.
//!
//! The socket receives nothing until an XDP program redirects frames of its
//! queue into an XSKMAP entry holding [`AfXdpSocket::fd`]; registering it is the
//! caller's job (the `ebpf` crate's loader).

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::time::Duration;

use xdpilone::xdp::XdpDesc;
use xdpilone::{
    CompletionQueue, FillQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig,
};

use crate::io::{BackendKind, IoStats, PacketIo};
use crate::io_error::{IoError, poll_readable};

/// Whether to bind the socket in zero-copy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroCopy {
    /// Try zero-copy, fall back to copy mode if the driver refuses (veth does).
    #[default]
    Auto,
    /// Zero-copy or fail.
    Required,
    /// Copy mode only.
    Off,
}

/// Configuration of one AF_XDP socket (one NIC queue).
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    pub iface: String,
    pub queue: u32,
    /// UMEM frames in total, e.g. 4096; half for rx, half for tx.
    pub frame_count: u32,
    /// Bytes per UMEM frame: 2048 or 4096.
    pub frame_size: u32,
    /// Entries of each of the four rings (power of two), e.g. 2048.
    pub ring_size: u32,
    pub zero_copy: ZeroCopy,
    /// Bind with `XDP_USE_NEED_WAKEUP`: syscalls only when the kernel asks.
    pub need_wakeup: bool,
    /// Put the UMEM on 2 MB hugepages (`MAP_HUGETLB`).
    pub hugepages: bool,
    /// Place the UMEM on this NUMA node (the NIC's), with mbind.
    pub numa_node: Option<usize>,
}

impl AfXdpConfig {
    /// Defaults for `iface`/`queue`: 4096 frames of 2048 bytes, rings of 2048.
    pub fn new(iface: impl Into<String>, queue: u32) -> Self {
        AfXdpConfig {
            iface: iface.into(),
            queue,
            frame_count: 4096,
            frame_size: 2048,
            ring_size: 2048,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            hugepages: false,
            numa_node: None,
        }
    }
}

// Kernel ABI constants not exported by xdpilone/libc.
const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
const HUGEPAGE: usize = 2 << 20;
/// Bounded EBUSY retries when the queue was only just released by a previous socket.
const BIND_ATTEMPTS: u32 = 10;
/// Tx kicks per `tx_flush` at most in copy mode (32 frames each).
const MAX_KICKS: u32 = 8;

/// `struct xdp_statistics` (Linux >= 5.9 layout).
#[repr(C)]
#[derive(Default)]
struct XdpStats {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

/// The UMEM mapping. Dropped after the rings (field order in `AfXdpSocket`).
struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned exclusively by this value; moving
// the owner to another thread moves the only handle through which it is used.
unsafe impl Send for UmemArea {}

impl UmemArea {
    fn map(cfg: &AfXdpConfig, bytes: usize) -> Result<Self, IoError> {
        let (len, extra) = if cfg.hugepages {
            (bytes.div_ceil(HUGEPAGE) * HUGEPAGE, libc::MAP_HUGETLB)
        } else {
            (bytes, 0)
        };
        // Node-local memory: map without populating, bind, then fault in.
        let populate = if cfg.numa_node.is_some() {
            0
        } else {
            libc::MAP_POPULATE
        };
        // SAFETY: anonymous private mapping with no address hint; the kernel
        // picks a fresh page-aligned range, no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate | extra,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            return Err(if cfg.hugepages {
                IoError::NoHugepages {
                    iface: cfg.iface.clone(),
                    queue: cfg.queue,
                    bytes: len,
                    source,
                }
            } else {
                IoError::sys(&cfg.iface, cfg.queue, "mmap of the UMEM", source)
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).expect("mmap returned NULL without MAP_FAILED");
        let area = UmemArea { ptr, len };
        if let Some(node) = cfg.numa_node {
            ferrogate_numa::bind_to_node(p as usize, len, node).map_err(|e| {
                IoError::sys(
                    &cfg.iface,
                    cfg.queue,
                    "binding the UMEM to the NIC's NUMA node",
                    io::Error::other(e.to_string()),
                )
            })?;
            // SAFETY: `p` is a fresh writable mapping of `len` bytes that we
            // own; writing zeros faults every page in under the new policy.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, len) };
        }
        Ok(area)
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map`, and
        // every ring referring to it has been dropped before (field order).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An AF_XDP socket bound to one NIC queue. Implements [`PacketIo`].
pub struct AfXdpSocket {
    // Rings first: fields drop in declaration order, the UMEM mapping last.
    rx: RingRx,
    tx: RingTx,
    fill: FillQueue,
    comp: CompletionQueue,
    umem: UmemArea,
    fd: RawFd,
    /// `!(frame_size - 1)`: masks a descriptor address to its chunk start.
    chunk_mask: u64,
    frame_size: u32,
    /// Free tx frames (UMEM offsets); capacity = all tx frames.
    free: Vec<u64>,
    /// Tx descriptors written by `tx_frame`, put on the ring by `tx_flush`.
    pending: Vec<XdpDesc>,
    /// Rx chunks to hand back to the fill ring; capacity = all rx frames.
    refill: Vec<u64>,
    tx_frames_total: u32,
    zero_copy: bool,
    need_wakeup: bool,
    stats: IoStats,
    tx_oversize: u64,
    iface: String,
    queue: u32,
}

impl AfXdpSocket {
    /// Creates the UMEM and rings and binds to `cfg.iface` queue `cfg.queue`.
    pub fn open(cfg: &AfXdpConfig) -> Result<Self, IoError> {
        let (iface, queue) = (cfg.iface.as_str(), cfg.queue);
        if cfg.frame_size != 2048 && cfg.frame_size != 4096 {
            return Err(IoError::config(
                iface,
                queue,
                format!("frame_size {} (must be 2048 or 4096)", cfg.frame_size),
            ));
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 64 {
            return Err(IoError::config(
                iface,
                queue,
                format!("ring_size {} (must be a power of two >= 64)", cfg.ring_size),
            ));
        }
        if cfg.frame_count < 2 {
            return Err(IoError::config(
                iface,
                queue,
                format!("frame_count {} (need at least 2)", cfg.frame_count),
            ));
        }
        let bytes = (cfg.frame_count as usize)
            .checked_mul(cfg.frame_size as usize)
            .ok_or_else(|| IoError::config(iface, queue, "frame_count * frame_size overflows"))?;
        crate::io_error::ifindex(iface, queue)?;

        let area = UmemArea::map(cfg, bytes)?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        let region = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: `region` is a page-aligned mapping of `area.len` bytes that
        // `area` keeps alive for as long as any ring (the returned socket
        // drops the rings before `area`). The kernel pins the pages on
        // registration.
        let umem = unsafe { Umem::new(umem_cfg, region) }
            .map_err(|e| errno(iface, queue, "UMEM registration (XDP_UMEM_REG)", e))?;

        let name = CString::new(iface)
            .map_err(|_| IoError::config(iface, queue, "interface name contains a NUL byte"))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|e| errno(iface, queue, "interface lookup", e))?;
        info.set_queue(queue);

        let sock = Socket::with_shared(&info, &umem)
            .map_err(|e| errno(iface, queue, "AF_XDP socket", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| errno(iface, queue, "fill/completion ring setup", e))?;
        let ring = std::num::NonZeroU32::new(cfg.ring_size);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags: 0,
                },
            )
            .map_err(|e| errno(iface, queue, "rx/tx ring setup", e))?;
        let rx = user
            .map_rx()
            .map_err(|e| errno(iface, queue, "mmap of the rx ring", e))?;
        let tx = user
            .map_tx()
            .map_err(|e| errno(iface, queue, "mmap of the tx ring", e))?;

        let zero_copy = bind(cfg, &umem, &sock)?;
        let fd = rx.as_raw_fd();
        if zero_copy != query_zero_copy(fd) {
            tracing::warn!(
                iface,
                queue,
                "AF_XDP: XDP_OPTIONS disagrees with the bind mode"
            );
        }

        let (mut fill, comp) = device.into_parts();
        // Rx frames: half the UMEM, but never more than the fill ring holds;
        // tx frames: the rest, never more than the tx/completion rings hold.
        let rx_frames = (cfg.frame_count / 2).min(cfg.ring_size);
        let tx_frames = (cfg.frame_count - rx_frames).min(cfg.ring_size);
        let fs = u64::from(cfg.frame_size);
        {
            let mut w = fill.fill(rx_frames);
            let n = w.insert((0..u64::from(rx_frames)).map(|i| i * fs));
            w.commit();
            if n != rx_frames {
                return Err(IoError::config(
                    iface,
                    queue,
                    format!("fill ring took only {n} of {rx_frames} frames"),
                ));
            }
        }
        let free: Vec<u64> = (u64::from(rx_frames)..u64::from(rx_frames + tx_frames))
            .rev()
            .map(|i| i * fs)
            .collect();
        drop(user);
        drop(sock);
        // The Umem handle itself is not needed any more: the fd lives on in
        // the rings, the mapping in `area`.
        drop(umem);

        tracing::info!(
            iface,
            queue,
            zero_copy,
            rx_frames,
            tx_frames,
            "AF_XDP socket bound"
        );
        Ok(AfXdpSocket {
            rx,
            tx,
            fill,
            comp,
            umem: area,
            fd,
            chunk_mask: !(fs - 1),
            frame_size: cfg.frame_size,
            free,
            pending: Vec::with_capacity(tx_frames as usize),
            refill: Vec::with_capacity(rx_frames as usize),
            tx_frames_total: tx_frames,
            zero_copy,
            need_wakeup: cfg.need_wakeup,
            stats: IoStats::default(),
            tx_oversize: 0,
            iface: cfg.iface.clone(),
            queue,
        })
    }

    /// The socket fd, to be put into the XSKMAP at index `queue`.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the bind ended up in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Frames refused by `tx_frame` because they exceed the frame size.
    pub fn tx_oversize(&self) -> u64 {
        self.tx_oversize
    }

    /// Moves completed tx frames back to the free list (no syscall).
    fn reap_completions(&mut self) {
        let mut r = self.comp.complete(self.tx_frames_total);
        while let Some(addr) = r.read() {
            debug_assert!(self.free.len() < self.free.capacity());
            self.free.push(addr & self.chunk_mask);
        }
        r.release();
    }

    /// Pointer to `len` bytes at UMEM offset `addr`, if in bounds.
    fn chunk(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.umem.len {
            return None;
        }
        // SAFETY: `start + len <= umem.len` was checked, so the offset stays
        // inside the mapping.
        Some(unsafe { self.umem.ptr.as_ptr().add(start) })
    }
}

/// Binds `sock`, trying zero-copy first when asked, retrying EBUSY.
/// Returns whether the socket is in zero-copy mode.
fn bind(cfg: &AfXdpConfig, umem: &Umem, sock: &Socket) -> Result<bool, IoError> {
    let (iface, queue) = (cfg.iface.as_str(), cfg.queue);
    let wake = if cfg.need_wakeup {
        SocketConfig::XDP_BIND_NEED_WAKEUP
    } else {
        0
    };
    let attempts: &[bool] = match cfg.zero_copy {
        ZeroCopy::Auto => &[true, false],
        ZeroCopy::Required => &[true],
        ZeroCopy::Off => &[false],
    };
    let mut last = None;
    for &zc in attempts {
        let mode = if zc {
            SocketConfig::XDP_BIND_ZEROCOPY
        } else {
            SocketConfig::XDP_BIND_COPY
        };
        // A ring-less `User` only carries the bind flags; the rings were
        // configured and mapped on the same fd before.
        let binder = umem
            .rx_tx(
                sock,
                &SocketConfig {
                    rx_size: None,
                    tx_size: None,
                    bind_flags: mode | wake,
                },
            )
            .map_err(|e| errno(iface, queue, "bind preparation", e))?;
        let mut backoff = Duration::from_millis(10);
        for attempt in 1..=BIND_ATTEMPTS {
            match umem.bind(&binder) {
                Ok(()) => return Ok(zc),
                Err(e) if e.get_raw() == libc::EBUSY && attempt < BIND_ATTEMPTS => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    last = Some(io::Error::from_raw_os_error(e.get_raw()));
                    break;
                }
            }
        }
        if zc {
            let err = last.take().expect("a failed bind records its error");
            if cfg.zero_copy == ZeroCopy::Required {
                return Err(IoError::ZeroCopyUnsupported {
                    iface: iface.to_owned(),
                    queue,
                    source: err,
                });
            }
            tracing::info!(iface, queue, error = %err, "AF_XDP zero-copy refused, using copy mode");
            last = Some(err);
        }
    }
    Err(IoError::sys(
        iface,
        queue,
        "AF_XDP bind (copy mode)",
        last.expect("a failed bind records its error"),
    ))
}

fn query_zero_copy(fd: RawFd) -> bool {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `flags`/`len` are valid for writes of the sizes given;
    // XDP_OPTIONS writes one u32 (`struct xdp_options`).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    rc == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
}

fn errno(iface: &str, queue: u32, what: &'static str, e: xdpilone::Errno) -> IoError {
    // xdpilone reports some argument errors as negative errno values.
    IoError::sys(
        iface,
        queue,
        what,
        io::Error::from_raw_os_error(e.get_raw().abs()),
    )
}

impl PacketIo for AfXdpSocket {
    fn kind(&self) -> BackendKind {
        BackendKind::AfXdp
    }

    fn rx_burst(&mut self, max: usize, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        if self.need_wakeup && self.fill.needs_wakeup() {
            // One poll(0) per burst at most, only when the kernel asks.
            self.fill.wake();
            self.stats.kicks += 1;
        }
        let room = self.refill.capacity() - self.refill.len();
        let max = max.min(room).min(u32::MAX as usize) as u32;
        if max == 0 {
            return Ok(0);
        }
        let mut n = 0usize;
        {
            let mut reader = self.rx.receive(max);
            while let Some(desc) = reader.read() {
                let len = desc.len as usize;
                let start = usize::try_from(desc.addr).unwrap_or(usize::MAX);
                if start
                    .checked_add(len)
                    .is_some_and(|end| end <= self.umem.len)
                {
                    // SAFETY: the range is inside the UMEM (checked above); the
                    // kernel published this descriptor (acquire in `receive`)
                    // and does not touch the chunk until we return it to the
                    // fill ring below, after the callback's borrow has ended.
                    let frame = unsafe {
                        std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), len)
                    };
                    on_frame(frame);
                    n += 1;
                    self.stats.rx_bytes += len as u64;
                }
                self.refill.push(desc.addr & self.chunk_mask);
            }
            reader.release();
        }
        self.stats.rx_frames += n as u64;
        if !self.refill.is_empty() {
            let mut w = self.fill.fill(self.refill.len() as u32);
            let k = (w.capacity() as usize).min(self.refill.len());
            w.insert(self.refill[..k].iter().copied());
            w.commit();
            drop(w);
            self.refill.drain(..k);
        }
        Ok(n)
    }

    fn tx_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.frame_size as usize {
            // Never fits: dropped and counted, not offered again.
            self.tx_oversize += 1;
            return true;
        }
        if self.free.is_empty() {
            self.reap_completions();
        }
        let Some(addr) = self.free.pop() else {
            self.stats.tx_ring_full += 1;
            return false;
        };
        let Some(dst) = self.chunk(addr, frame.len()) else {
            // Cannot happen: free-list addresses are chunk starts inside the UMEM.
            self.stats.tx_ring_full += 1;
            return false;
        };
        // SAFETY: `dst..dst+len` is inside the UMEM (checked by `chunk`) and the
        // chunk is ours: it came off the free list, so neither the kernel nor
        // another descriptor refers to it; `frame` cannot overlap the UMEM
        // chunk since it is a distinct live borrow.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), dst, frame.len()) };
        self.pending.push(XdpDesc {
            addr,
            len: frame.len() as u32,
            options: 0,
        });
        true
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let mut w = self.tx.transmit(self.pending.len() as u32);
            let k = (w.capacity() as usize).min(self.pending.len());
            w.insert(self.pending[..k].iter().copied());
            w.commit();
            drop(w);
            for d in &self.pending[..k] {
                self.stats.tx_bytes += u64::from(d.len);
            }
            self.stats.tx_frames += k as u64;
            self.pending.drain(..k);
        }
        // Kick while the kernel has not consumed everything. Copy mode sends
        // at most 32 frames per sendto (the kernel's TX_BATCH_SIZE), so a
        // burst of 64 needs two kicks: kick again while each kick makes
        // progress, at most MAX_KICKS times per flush. Zero-copy drivers drain
        // the ring from NAPI after one kick.
        let max_kicks = if self.zero_copy { 1 } else { MAX_KICKS };
        for _ in 0..max_kicks {
            let before = self.tx.pending();
            if before == 0 || (self.need_wakeup && !self.tx.needs_wakeup()) {
                break;
            }
            self.stats.kicks += 1;
            // SAFETY: sendto on our own socket fd with no buffer and no
            // address; AF_XDP treats it as "process the tx ring".
            let rc = unsafe {
                libc::sendto(
                    self.fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // Busy or out of buffers: the ring keeps the frames, the
                    // next flush kicks again.
                    Some(
                        libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR | libc::ENETDOWN,
                    ) => break,
                    _ => {
                        return Err(io::Error::new(
                            err.kind(),
                            format!("{} queue {}: AF_XDP tx kick: {err}", self.iface, self.queue),
                        ));
                    }
                }
            }
            if self.tx.pending() >= before {
                break;
            }
        }
        self.reap_completions();
        Ok(())
    }

    fn wait(&mut self, timeout: Duration, wake: RawFd) -> io::Result<bool> {
        poll_readable(&[self.fd, wake], timeout).map(|ready| ready & 2 != 0)
    }

    fn stats(&self) -> IoStats {
        let mut s = self.stats;
        let mut st = XdpStats::default();
        let mut len = std::mem::size_of::<XdpStats>() as libc::socklen_t;
        // SAFETY: `st` is a repr(C) struct of `len` writable bytes; the kernel
        // writes at most `len` bytes and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                SOL_XDP,
                XDP_STATISTICS,
                (&mut st as *mut XdpStats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            s.rx_dropped = st.rx_dropped + st.rx_ring_full;
        }
        s
    }
}
