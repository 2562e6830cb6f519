//! The exception path of a DPDK-owned port (issue #24): a multi-queue TAP
//! interface that carries the host's own traffic. DPDK takes the NIC from
//! the kernel; frames the filter tier says are not a VIP's (what the XDP
//! program would pass: ARP and neighbour discovery for the host's address,
//! SSH, ICMP, the host's own services) are written to the TAP, and what the
//! kernel sends through it goes out of the port. The host keeps its
//! addresses on the TAP.
//!
//! DPDK recommends virtio-user/vhost-net (or its TAP PMD) over KNI for this;
//! both need a second DPDK port and a burst loop of their own. A kernel TAP
//! opened straight from the worker gives the same path with one queue per
//! worker (`IFF_MULTI_QUEUE`: no lock, no hand-off), one read per poll
//! round and one write per exception frame — the host's traffic, not the
//! VIPs'. Written on `libc` ioctls (as `netdev.rs`): the `tun` crates pull
//! in async runtimes or are unmaintained.
//!
//! The TAP takes the port's MAC (the kernel answers ARP for the host's
//! address with it, so its frames come back through the port) and does not
//! generate an IPv6 link-local address of its own (`addr_gen_mode = none`):
//! one derived from the same MAC would clash with the stack's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One worker's queue of the exception TAP.
pub struct ExceptionTap {
    fd: OwnedFd,
    name: String,
    /// One frame read from the kernel: a 9000-byte MTU's frame fits; a
    /// read that fills it whole was cut short and is dropped.
    buf: Box<[u8; FRAME_BUF]>,
    /// Frames the kernel sent that did not fit `buf` (dropped).
    pub truncated: u64,
}

const FRAME_BUF: usize = 9216 + 64;

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // `all` and `default` are the sysctl directories of every interface.
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.contains(['/', ' ', '\0'])
        || matches!(name, "." | ".." | "all" | "default")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// Runs an interface ioctl on a throwaway datagram socket.
fn if_ioctl(request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the kernel
    // reads (or writes) the union member the request names.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl ExceptionTap {
    /// Opens one queue of the TAP `name` (created if missing; an existing
    /// multi-queue TAP, e.g. made by `ip tuntap add NAME mode tap
    /// multi_queue` with the host's addresses, is attached to). The first
    /// queue (`configure`) sets the port's MAC, turns off IPv6 address
    /// generation and brings the interface up.
    pub fn open(name: &str, mac: [u8; 6], configure: bool) -> io::Result<Self> {
        let mut req = ifreq_named(name)?;
        // SAFETY: open(2) of a constant, NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("/dev/net/tun: {e}")));
        }
        // SAFETY: `fd` was just returned by open(2) and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let existed = iface_exists(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as i16;
        // SAFETY: TUNSETIFF reads a valid ifreq (name and flags).
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let why = match e.raw_os_error() {
                Some(libc::EBUSY) => "the name belongs to an interface that is not a TAP",
                Some(libc::EINVAL) => {
                    "an existing TAP without multi_queue (`ip tuntap add NAME mode tap multi_queue`)"
                }
                Some(libc::EPERM) => "needs CAP_NET_ADMIN",
                _ => "opening a TAP queue",
            };
            return Err(io::Error::new(
                e.kind(),
                format!("TUNSETIFF {name}: {why}: {e}"),
            ));
        }
        if !existed {
            // A TAP we made outlives the engine, with the host's addresses
            // the operator put on it: a crash or a restart must not take
            // the host off the network.
            // SAFETY: TUNSETPERSIST takes an int argument on an attached fd.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_int) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("TUNSETPERSIST {name}: {e}"),
                ));
            }
        }
        if configure {
            configure_iface(name, mac)?;
        }
        Ok(Self {
            fd,
            name: name.to_string(),
            buf: Box::new([0; FRAME_BUF]),
            truncated: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands the kernel one frame; false when it did not take it (its queue
    /// is full, the interface is down): the caller counts a drop.
    pub fn write(&self, frame: &[u8]) -> bool {
        // SAFETY: `frame` is a live slice; write(2) only reads it.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        n == frame.len() as isize
    }

    /// Reads up to `max` frames the kernel sent; each goes to `on_frame`.
    /// Stops at the first would-block (or error).
    pub fn read_burst(&mut self, max: usize, mut on_frame: impl FnMut(&[u8])) -> usize {
        let mut got = 0;
        while got < max {
            // SAFETY: the buffer is ours and `len` bytes long.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
            got += 1;
            let n = n as usize;
            if n >= self.buf.len() {
                // Cut short (an MTU past the buffer): never sent as is.
                self.truncated += 1;
                continue;
            }
            on_frame(&self.buf[..n]);
        }
        got
    }
}

/// Whether an interface of that name exists in this network namespace.
fn iface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string; no other precondition.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// The TAP speaks with the port's MAC, generates no IPv6 address of its own
/// and is up.
fn configure_iface(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut req = ifreq_named(name)?;
    // SAFETY: all-zero sockaddr is valid; the union member is written whole.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in hw.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    if_ioctl(libc::SIOCSIFHWADDR, &mut req)
        .map_err(|e| io::Error::new(e.kind(), format!("setting {name}'s MAC: {e}")))?;
    // Before it is up, so no link-local address is made from the MAC the
    // stack uses too. A kernel without IPv6 has no such file: nothing to do.
    let gen_mode = format!("/proc/sys/net/ipv6/conf/{name}/addr_gen_mode");
    if std::path::Path::new(&gen_mode).exists() {
        std::fs::write(&gen_mode, "1")
            .map_err(|e| io::Error::new(e.kind(), format!("{gen_mode}: {e}")))?;
    }
    let mut req = ifreq_named(name)?;
    if_ioctl(libc::SIOCGIFFLAGS, &mut req)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {name}'s flags: {e}")))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
    if_ioctl(libc::SIOCSIFFLAGS, &mut req)
        .map_err(|e| io::Error::new(e.kind(), format!("bringing {name} up: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for n in [
            "",
            "a/b",
            "sixteen-chars-xx",
            "sp ace",
            "all",
            "default",
            "..",
        ] {
            assert!(ifreq_named(n).is_err(), "{n:?}");
        }
        assert!(ifreq_named("fgx0").is_ok());
    }
}
