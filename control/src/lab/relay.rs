//! The impairment relay: moves frames between a side's port (`c-port`, the
//! client's veth peer) and the relay veth (`c-rly`, whose peer `c-br` is
//! the bridge port) with AF_PACKET sockets, each direction through a
//! [`Pipe`]. Lab tooling, not the data plane: one thread, recvmsg/sendto,
//! no allocation or logging per frame. SIGHUP re-reads the spec file,
//! SIGTERM stops; counters go to a stats file every 250 ms.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::impair::{Dir, SideSpec};
use super::pipe::{Pipe, SLOT};

const STATS_EVERY: Duration = Duration::from_millis(250);
/// Frames read from one socket before looking at the other.
const BATCH: usize = 64;
// linux/if_packet.h, not in libc for every target.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

pub struct RelayArgs {
    /// The side's port (its host is behind it): frames read here go `tx`.
    pub host_if: String,
    /// The relay veth (the bridge is behind it): frames read here go `rx`.
    pub lab_if: String,
    pub spec_file: PathBuf,
    pub stats_file: PathBuf,
    pub pid_file: PathBuf,
}

/// A raw AF_PACKET socket bound to one interface, all protocols.
struct PacketSocket {
    fd: libc::c_int,
    ifindex: i32,
    name: String,
}

impl PacketSocket {
    fn open(ifname: &str) -> Result<PacketSocket> {
        let cname = std::ffi::CString::new(ifname)?;
        // SAFETY: if_nametoindex reads a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("interface {ifname}: {}", io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", io::Error::last_os_error());
        }
        let s = PacketSocket {
            fd,
            ifindex,
            name: ifname.to_string(),
        };
        s.setopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            .context("PACKET_IGNORE_OUTGOING")?;
        // The VLAN tag the kernel moved into metadata, to put it back.
        s.setopt(libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)
            .context("PACKET_AUXDATA")?;
        // Room for bursts while the relay is descheduled (2 shared cores);
        // SO_RCVBUFFORCE as root, beyond rmem_max.
        let _ = s.setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let _ = s.setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: binding our own fd to a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("binding to {ifname}: {}", io::Error::last_os_error());
        }
        Ok(s)
    }

    fn setopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt on our fd with a c_int value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame into `buf` with its VLAN tag (if the kernel took it
    /// out) put back. Ok(None): nothing to read. Ok(Some(n)) with n larger
    /// than `buf`: the frame was truncated.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // Leave 4 bytes to reinsert a tag.
        let cap = buf.len() - 4;
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: cap,
        };
        let mut cmsg = [0u64; 16];
        // SAFETY: msghdr and sockaddr_ll are plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: recvmsg into buffers that live for the call; MSG_TRUNC
        // reports the real length of a frame larger than the buffer.
        let n = unsafe { libc::recvmsg(self.fd, &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let mut n = n as usize;
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            // Our own sends (if PACKET_IGNORE_OUTGOING is unsupported).
            return Ok(Some(0));
        }
        if n > cap {
            return Ok(Some(n));
        }
        // SAFETY: walking the control messages recvmsg filled in `msg`.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: `c` points at a control message inside `cmsg`.
            let h = unsafe { &*c };
            if h.cmsg_level == libc::SOL_PACKET && h.cmsg_type == libc::PACKET_AUXDATA {
                // SAFETY: a PACKET_AUXDATA message carries a tpacket_auxdata
                // (read unaligned: the buffer gives no alignment promise).
                let aux: libc::tpacket_auxdata =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 && n >= 12 {
                    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    buf.copy_within(12..n, 16);
                    buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                    buf[14..16].copy_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                    n += 4;
                }
            }
            // SAFETY: as above.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        Ok(Some(n))
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        // SAFETY: `frame` and `sll` are valid for the call.
        let rc = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        rc >= 0
    }

    /// Frames the kernel dropped for this socket since the last call.
    fn kernel_drops(&self) -> u64 {
        // SAFETY: tpacket_stats is plain data; zeroed is valid.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as u32;
        // SAFETY: getsockopt into a buffer of the stated size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc == 0 { st.tp_drops as u64 } else { 0 }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.fd) };
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Writes `text` to `path` atomically (readers never see half a file).
fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn render_stats(pipes: &[(Dir, &Pipe)], generation: u64) -> String {
    let mut s = format!("spec_generation {generation}\n");
    for (d, p) in pipes {
        for (k, v) in p.stats.fields() {
            s.push_str(&format!("{}_{k} {v}\n", d.name()));
        }
        s.push_str(&format!("{}_queued {}\n", d.name(), p.queued()));
    }
    s
}

/// Runs the relay until SIGTERM/SIGINT.
pub fn run(args: RelayArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    let read_spec = || -> Result<SideSpec> {
        let text = std::fs::read_to_string(&args.spec_file)
            .with_context(|| format!("reading {}", args.spec_file.display()))?;
        SideSpec::from_file(&text).with_context(|| format!("in {}", args.spec_file.display()))
    };
    let spec = read_spec()?;
    let host = PacketSocket::open(&args.host_if)?;
    let lab = PacketSocket::open(&args.lab_if)?;
    let seed = seed();
    let mut tx = Pipe::new(spec.tx.clone(), seed);
    let mut rx = Pipe::new(
        spec.rx.clone(),
        seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15,
    );
    let mut generation = 1u64;
    std::fs::write(&args.pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", args.pid_file.display()))?;
    write_atomic(
        &args.stats_file,
        &render_stats(&[(Dir::Tx, &tx), (Dir::Rx, &rx)], generation),
    )?;
    tracing::info!(host = %host.name, lab = %lab.name, tx = %spec.tx, rx = %spec.rx, "impairment relay running");
    let mut scratch = vec![0u8; SLOT];
    let mut next_stats = Instant::now() + STATS_EVERY;
    let mut errors_logged = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            match read_spec() {
                Ok(s) => {
                    tx.set(s.tx.clone());
                    rx.set(s.rx.clone());
                    generation += 1;
                    tracing::info!(tx = %s.tx, rx = %s.rx, generation, "impairment changed");
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "spec not reloaded"),
            }
            write_atomic(
                &args.stats_file,
                &render_stats(&[(Dir::Tx, &tx), (Dir::Rx, &rx)], generation),
            )?;
        }
        let now = Instant::now();
        let mut wake = next_stats;
        for p in [&tx, &rx] {
            if let Some(d) = p.next_due() {
                wake = wake.min(d);
            }
        }
        let wait = wake.saturating_duration_since(now);
        let mut fds = [
            libc::pollfd {
                fd: host.fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: lab.fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: ppoll on two valid pollfds with a timespec that lives for
        // the call; no signal mask change. EINTR (a signal) just loops.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        for (sock, pipe, pfd) in [(&host, &mut tx, fds[0]), (&lab, &mut rx, fds[1])] {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            for _ in 0..BATCH {
                let now = Instant::now();
                let r = match pipe.slot() {
                    Some((slot, buf)) => sock.recv(buf).map(|n| n.map(|n| (Some(slot), n))),
                    None => sock.recv(&mut scratch).map(|n| n.map(|n| (None, n))),
                };
                match r {
                    Ok(None) => break,
                    Ok(Some((_, 0))) => {}
                    Ok(Some((_, n))) if n > SLOT - 4 => pipe.oversize(),
                    Ok(Some((Some(slot), n))) => pipe.admit(now, slot, n),
                    Ok(Some((None, _))) => pipe.full(),
                    Err(e) => {
                        if errors_logged < 10 {
                            errors_logged += 1;
                            tracing::warn!(iface = %sock.name, error = %e, "recv failed");
                        }
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        tx.drain_due(now, |f| lab.send(f));
        rx.drain_due(now, |f| host.send(f));
        if now >= next_stats {
            next_stats = now + STATS_EVERY;
            tx.stats.socket_drops += host.kernel_drops();
            rx.stats.socket_drops += lab.kernel_drops();
            write_atomic(
                &args.stats_file,
                &render_stats(&[(Dir::Tx, &tx), (Dir::Rx, &rx)], generation),
            )?;
        }
    }
    write_atomic(
        &args.stats_file,
        &render_stats(&[(Dir::Tx, &tx), (Dir::Rx, &rx)], generation),
    )?;
    let _ = std::fs::remove_file(&args.pid_file);
    tracing::info!("impairment relay stopped");
    Ok(())
}
