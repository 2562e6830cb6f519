//! The frame relay of a binary upgrade. The successor engine owns the NIC
//! queues; frames of flows its predecessor still serves are copied to the
//! predecessor, and what the predecessor sends comes back and goes out of
//! the NIC. Per queue, two single-producer single-consumer rings of
//! fixed-size slots in one shared memory region: a memfd the successor
//! creates and passes over the upgrade socket (SCM_RIGHTS), so nothing is
//! left in a file system when either process dies.
//!
//! No lock, allocation or syscall per frame: a copy into a slot and one
//! release store of the producer's index.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::io::{BackendKind, IoStats, PacketIo};

/// Bytes per slot: a length word, then the frame (any frame an AF_XDP chunk holds).
const SLOT: usize = 4096;
/// Largest frame a slot carries.
pub const MAX_RELAY_FRAME: usize = SLOT - 4;
/// Slots per ring.
const SLOTS: u32 = 1024;
/// The ring's indices, each on its own cache line.
const HEAD: usize = 0;
const TAIL: usize = 64;
const CLOSED: usize = 128;
const HEADER: usize = 256;
const RING_BYTES: usize = HEADER + SLOTS as usize * SLOT;
/// Two rings per queue: to the predecessor, then to the successor.
const QUEUE_BYTES: usize = 2 * RING_BYTES;

/// A shared mapping of the relay rings of `queues` queues.
pub struct RelayShm {
    base: *mut u8,
    len: usize,
    queues: u32,
    fd: OwnedFd,
}

// SAFETY: the mapping is only reached through `Ring`, whose indices are
// atomics and whose slots are written by the one producer before the
// release store that publishes them, and read by the one consumer after
// the acquire load that sees them.
unsafe impl Send for RelayShm {}
// SAFETY: as above; `&RelayShm` gives no unsynchronised access.
unsafe impl Sync for RelayShm {}

impl Drop for RelayShm {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

impl std::fmt::Debug for RelayShm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayShm")
            .field("queues", &self.queues)
            .field("bytes", &self.len)
            .finish()
    }
}

impl RelayShm {
    /// A fresh region for `queues` queues (the successor's side).
    pub fn create(queues: u32) -> io::Result<Arc<RelayShm>> {
        // SAFETY: memfd_create with a NUL-terminated name and flags.
        let fd = unsafe {
            libc::memfd_create(
                c"ferrogate-relay".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor memfd_create just returned, owned from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = queues as usize * QUEUE_BYTES;
        // SAFETY: ftruncate on our own descriptor; the new pages read as zero.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Sealed at its size: the other process maps it, and a region that
        // shrank under it would fault (SIGBUS) instead of failing here.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own memfd.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, queues)
    }

    /// Maps a region received from the successor (the predecessor's side);
    /// its size must be that of `queues` queues.
    pub fn open(fd: OwnedFd, queues: u32) -> io::Result<Arc<RelayShm>> {
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & need != need {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the relay region is not a memfd sealed at its size",
            ));
        }
        // SAFETY: fstat into a zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above, on a descriptor we own.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_size as usize != queues as usize * QUEUE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "relay region is {} bytes, {queues} queue(s) need {}",
                    st.st_size,
                    queues as usize * QUEUE_BYTES
                ),
            ));
        }
        Self::map(fd, queues)
    }

    fn map(fd: OwnedFd, queues: u32) -> io::Result<Arc<RelayShm>> {
        let len = queues as usize * QUEUE_BYTES;
        // SAFETY: a shared read-write mapping of `len` bytes of our memfd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(RelayShm {
            base: base.cast(),
            len,
            queues,
            fd,
        }))
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// Marks every queue's predecessor-to-successor ring closed (the
    /// predecessor died without doing it).
    pub fn close_all(self: &Arc<Self>) {
        for q in 0..self.queues {
            self.ring(q, true).close();
        }
    }

    fn ring(self: &Arc<Self>, queue: u32, to_successor: bool) -> Ring {
        assert!(queue < self.queues, "relay queue out of range");
        let off = queue as usize * QUEUE_BYTES + usize::from(to_successor) * RING_BYTES;
        Ring {
            // SAFETY: `off + RING_BYTES <= len` (checked queue), inside the mapping.
            base: unsafe { self.base.add(off) },
            _shm: self.clone(),
        }
    }

    /// The predecessor's port for `queue`: what the successor relays in,
    /// what it sends out.
    pub fn predecessor_port(self: &Arc<Self>, queue: u32) -> RelayPort {
        RelayPort {
            rx: self.ring(queue, false),
            tx: self.ring(queue, true),
            stats: IoStats::default(),
        }
    }

    /// The successor's link for `queue`.
    pub fn successor_link(self: &Arc<Self>, queue: u32) -> RelayLink {
        RelayLink {
            to_old: self.ring(queue, false),
            from_old: self.ring(queue, true),
            relayed_out: 0,
            relayed_in: 0,
            dropped: 0,
        }
    }
}

/// One direction of one queue.
struct Ring {
    base: *mut u8,
    _shm: Arc<RelayShm>,
}

// SAFETY: see `RelayShm`: each ring end lives in one worker thread.
unsafe impl Send for Ring {}

impl Ring {
    fn index(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is one of HEAD/TAIL/CLOSED, 4-byte aligned inside the
        // header of a page-aligned mapping; AtomicU32 has u32's layout and
        // the other process only touches it atomically too.
        unsafe { &*self.base.add(at).cast::<AtomicU32>() }
    }

    fn slot(&self, i: u32) -> *mut u8 {
        // SAFETY: `i % SLOTS` keeps the slot inside the ring.
        unsafe { self.base.add(HEADER + (i % SLOTS) as usize * SLOT) }
    }

    /// Copies `frame` into the next slot; false when full or too large.
    fn push(&self, frame: &[u8]) -> bool {
        if frame.len() > MAX_RELAY_FRAME {
            return false;
        }
        let head = self.index(HEAD).load(Ordering::Relaxed);
        let tail = self.index(TAIL).load(Ordering::Acquire);
        if head.wrapping_sub(tail) >= SLOTS {
            return false;
        }
        let slot = self.slot(head);
        // SAFETY: the slot is free (the consumer moved past it, acquire
        // above) and `4 + frame.len() <= SLOT`; only this producer writes it.
        unsafe {
            slot.cast::<u32>().write_unaligned(frame.len() as u32);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), slot.add(4), frame.len());
        }
        self.index(HEAD)
            .store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// Hands frames to `f` until it returns false (that frame stays) or
    /// `max` went; returns how many went.
    fn pop_while(&self, max: usize, mut f: impl FnMut(&[u8]) -> bool) -> usize {
        let mut tail = self.index(TAIL).load(Ordering::Relaxed);
        let head = self.index(HEAD).load(Ordering::Acquire);
        let mut n = 0;
        while tail != head && n < max {
            let slot = self.slot(tail);
            // SAFETY: the producer published this slot (acquire above) and
            // will not touch it before our release store of the tail; the
            // length is clamped so a corrupt word cannot read past the slot.
            let frame = unsafe {
                let len = (slot.cast::<u32>().read_unaligned() as usize).min(MAX_RELAY_FRAME);
                std::slice::from_raw_parts(slot.add(4), len)
            };
            if !f(frame) {
                break;
            }
            tail = tail.wrapping_add(1);
            n += 1;
        }
        self.index(TAIL).store(tail, Ordering::Release);
        n
    }

    fn is_empty(&self) -> bool {
        self.index(TAIL).load(Ordering::Relaxed) == self.index(HEAD).load(Ordering::Acquire)
    }

    fn close(&self) {
        self.index(CLOSED).store(1, Ordering::Release);
    }

    fn closed(&self) -> bool {
        self.index(CLOSED).load(Ordering::Acquire) != 0
    }
}

/// The predecessor's packet port during an upgrade: its worker's frames
/// come from and go to the successor, which owns the NIC queue.
pub struct RelayPort {
    rx: Ring,
    tx: Ring,
    stats: IoStats,
}

impl RelayPort {
    /// The predecessor is done with this queue: the successor stops
    /// relaying to it (and takes the whole port range back).
    pub fn close(&self) {
        self.tx.close();
    }
}

impl Drop for RelayPort {
    fn drop(&mut self) {
        self.close();
    }
}

impl PacketIo for RelayPort {
    fn kind(&self) -> BackendKind {
        BackendKind::Relay
    }

    fn rx_burst(&mut self, max: usize, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let (mut frames, mut bytes) = (0u64, 0u64);
        let n = self.rx.pop_while(max, |f| {
            frames += 1;
            bytes += f.len() as u64;
            on_frame(f);
            true
        });
        self.stats.rx_frames += frames;
        self.stats.rx_bytes += bytes;
        Ok(n)
    }

    fn tx_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_RELAY_FRAME {
            self.stats.tx_ring_full += 1;
            return true;
        }
        let sent = self.tx.push(frame);
        self.stats.count_tx(sent, frame.len())
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wait(&mut self, timeout: Duration, wake: RawFd) -> io::Result<bool> {
        // The successor does not signal: a short sleep on the hand-off
        // eventfd alone bounds what a relayed frame waits.
        if !self.rx.is_empty() {
            return Ok(false);
        }
        let timeout = timeout.min(Duration::from_micros(200));
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: timeout.as_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: ppoll on one pollfd and a timespec we own.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(r > 0 && pfd.revents & libc::POLLIN != 0)
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

/// The successor worker's end of one queue's relay.
pub struct RelayLink {
    to_old: Ring,
    from_old: Ring,
    pub relayed_out: u64,
    pub relayed_in: u64,
    pub dropped: u64,
}

impl RelayLink {
    /// Copies a frame of one of the predecessor's flows to it; a full ring
    /// drops it (counted; TCP retransmits).
    pub fn send(&mut self, frame: &[u8]) {
        if self.to_old.push(frame) {
            self.relayed_out += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// Hands the predecessor's outgoing frames to `tx` until it refuses
    /// one (the NIC ring is full: that frame waits for the next pass).
    pub fn forward(&mut self, max: usize, tx: impl FnMut(&[u8]) -> bool) -> usize {
        let n = self.from_old.pop_while(max, tx);
        self.relayed_in += n as u64;
        n
    }

    /// The predecessor closed its end and everything it sent went out.
    pub fn finished(&self) -> bool {
        self.from_old.closed() && self.from_old.is_empty()
    }
}

/// Sends `payload` and `fd` over a Unix stream socket (SCM_RIGHTS).
pub fn send_fd(sock: RawFd, payload: &[u8], fd: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: a zeroed msghdr pointing at our iovec and control buffer,
    // which outlive the sendmsg call; CMSG_FIRSTHDR/CMSG_DATA stay inside
    // `cbuf` (sized by CMSG_SPACE for one descriptor).
    let r = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if (r as usize) < payload.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and the descriptor sent with them.
pub fn recv_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in `send_fd`; the kernel writes at most `msg_controllen`
    // bytes of control data and `iov_len` bytes of payload.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // Every descriptor that came is owned (closed on drop); one is
        // expected.
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = data.cast::<RawFd>().add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more descriptors than one relay region",
            ));
        }
        Ok((n as usize, fds.pop()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_cross_both_ways_in_order_and_a_full_ring_refuses() {
        let shm = RelayShm::create(2).unwrap();
        let mut link = shm.successor_link(1);
        let mut port = shm.predecessor_port(1);
        link.send(b"one");
        link.send(b"two");
        let mut got = vec![];
        port.rx_burst(8, &mut |f| got.push(f.to_vec())).unwrap();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(port.tx_frame(b"out"));
        let mut sent = vec![];
        assert_eq!(
            link.forward(8, |f| {
                sent.push(f.to_vec());
                true
            }),
            1
        );
        assert_eq!(sent, vec![b"out".to_vec()]);
        for _ in 0..SLOTS {
            assert!(port.tx_frame(b"x"));
        }
        assert!(!port.tx_frame(b"x"), "full");
        // A refused frame stays for the next pass.
        assert_eq!(link.forward(8, |_| false), 0);
        assert_eq!(link.forward(SLOTS as usize, |_| true), SLOTS as usize);
        assert!(!link.finished(), "still open");
        drop(port);
        assert!(link.finished());
        // The other queue is untouched.
        let mut other = shm.predecessor_port(0);
        assert_eq!(other.rx_burst(8, &mut |_| {}).unwrap(), 0);
    }

    #[test]
    fn a_region_passed_over_a_unix_socket_is_the_same_memory() {
        let shm = RelayShm::create(1).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), b"hello", shm.fd()).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let theirs = RelayShm::open(fd.expect("a descriptor"), 1).unwrap();
        let mut link = shm.successor_link(0);
        let mut port = theirs.predecessor_port(0);
        link.send(b"across");
        let mut got = vec![];
        port.rx_burst(4, &mut |f| got.push(f.to_vec())).unwrap();
        assert_eq!(got, vec![b"across".to_vec()]);
        assert!(
            RelayShm::open(theirs.fd.try_clone().unwrap(), 2).is_err(),
            "size checked"
        );
    }
}
