//! Errors of the packet-I/O backends. Every message names the interface and
//! queue and what failed, so a log line alone says which socket broke.

use std::io;

/// Failure to open or drive a packet-I/O backend.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The configuration cannot work (sizes not powers of two, zero counts, ...).
    #[error("{iface} queue {queue}: invalid configuration: {reason}")]
    Config {
        iface: String,
        queue: u32,
        reason: String,
    },
    /// The interface does not exist (in this network namespace).
    #[error("{iface} queue {queue}: no such interface: {source}")]
    NoInterface {
        iface: String,
        queue: u32,
        #[source]
        source: io::Error,
    },
    /// `MAP_HUGETLB` failed: no (or not enough) 2 MB hugepages are reserved.
    #[error(
        "{iface} queue {queue}: cannot map {bytes} bytes of UMEM on hugepages ({source}); \
         reserve some with `sysctl vm.nr_hugepages=N` or open without hugepages"
    )]
    NoHugepages {
        iface: String,
        queue: u32,
        bytes: usize,
        #[source]
        source: io::Error,
    },
    /// Zero-copy was required but the driver refused it.
    #[error(
        "{iface} queue {queue}: zero-copy AF_XDP bind refused ({source}); the driver does not \
         support it (veth never does) — use zero_copy = auto or off"
    )]
    ZeroCopyUnsupported {
        iface: String,
        queue: u32,
        #[source]
        source: io::Error,
    },
    /// A system call failed; `what` names the step.
    #[error("{iface} queue {queue}: {what} failed: {source}")]
    Sys {
        iface: String,
        queue: u32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl IoError {
    pub(crate) fn sys(iface: &str, queue: u32, what: &'static str, source: io::Error) -> Self {
        IoError::Sys {
            iface: iface.to_owned(),
            queue,
            what,
            source,
        }
    }

    pub(crate) fn last_os(iface: &str, queue: u32, what: &'static str) -> Self {
        Self::sys(iface, queue, what, io::Error::last_os_error())
    }

    pub(crate) fn config(iface: &str, queue: u32, reason: impl Into<String>) -> Self {
        IoError::Config {
            iface: iface.to_owned(),
            queue,
            reason: reason.into(),
        }
    }
}

impl From<IoError> for io::Error {
    fn from(e: IoError) -> Self {
        let kind = match &e {
            IoError::Sys { source, .. }
            | IoError::NoInterface { source, .. }
            | IoError::NoHugepages { source, .. }
            | IoError::ZeroCopyUnsupported { source, .. } => source.kind(),
            IoError::Config { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Resolves an interface name to its index, with an error naming it.
pub(crate) fn ifindex(iface: &str, queue: u32) -> Result<u32, IoError> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| IoError::config(iface, queue, "interface name contains a NUL byte"))?;
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return Err(IoError::config(
            iface,
            queue,
            format!("interface name longer than {} bytes", libc::IFNAMSIZ - 1),
        ));
    }
    // SAFETY: `name` is a valid NUL-terminated C string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(IoError::NoInterface {
            iface: iface.to_owned(),
            queue,
            source: io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

/// Sleeps until one of `fds` (at most two) is readable or `timeout` passes;
/// EINTR counts as a wake-up. Returns a bit per fd that is readable (bit 0
/// for `fds[0]`).
pub(crate) fn poll_readable(fds: &[libc::c_int], timeout: std::time::Duration) -> io::Result<u8> {
    // ppoll, not poll: adaptive workers sleep for sub-millisecond budgets.
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 2];
    let n = fds.len().min(pfds.len());
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
    }
    // SAFETY: `pfds` holds `n` valid, initialised pollfds, and `ts` outlives
    // the call; a null sigmask keeps the current one.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        return Ok(0);
    }
    Ok(pfds[..n]
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents & libc::POLLIN != 0)
        .fold(0, |m, (i, _)| m | 1 << i))
}
