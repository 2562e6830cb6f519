//! systemd's notify protocol (`sd_notify(3)`), for `Type=notify` units:
//! one datagram per state (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, …) to the
//! socket named by `$NOTIFY_SOCKET`. A few lines on a `UnixDatagram`
//! instead of a crate: the protocol is one `sendto`, and the abstract
//! socket names systemd uses (`@…`) are in std.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use anyhow::{Context, Result};

/// Environment variables of the protocol (removed from children's
/// environments: only the supervisor speaks for the unit).
pub const ENV: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Sends states to the service manager.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when it is unset or empty (not run by
    /// systemd, or not `Type=notify`).
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Self::new(&s).map(Some),
            _ => Ok(None),
        }
    }

    /// To the socket `path`: a file path, or `@name` for an abstract one.
    pub fn new(path: &str) -> Result<Self> {
        let addr = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        } else {
            SocketAddr::from_pathname(path)
        }
        .with_context(|| format!("NOTIFY_SOCKET {path:?}"))?;
        let sock = UnixDatagram::unbound().context("creating the notify socket")?;
        Ok(Self { sock, addr })
    }

    /// Sends `state` (`KEY=VALUE` lines).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

/// How often to send `WATCHDOG=1`: half of `watchdog_usec` (systemd's
/// advice), when the watchdog is on and meant for `pid` (`WATCHDOG_PID`
/// unset, or naming it).
pub fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    if let Some(p) = watchdog_pid
        && p.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `watchdog_interval` from this process's environment.
pub fn watchdog_from_env() -> Option<Duration> {
    let get = |k| std::env::var(k).ok();
    watchdog_interval(
        get("WATCHDOG_USEC").as_deref(),
        get("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("fg-sdnotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.notify("READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("fg-sdnotify-test-{}", std::process::id());
        let abs = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        abs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .notify("WATCHDOG=1")
            .unwrap();
        let len = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_watchdog_interval_is_half_the_timeout_and_only_for_its_pid() {
        let half = Some(Duration::from_millis(1500));
        assert_eq!(watchdog_interval(Some("3000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("3000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("3000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }
}
