//! Fail-closed persistence: with `fail_mode = closed` the program's BPF link
//! is pinned in bpffs, so the program stays attached when the engine exits
//! or crashes (VIP frames find no socket and are dropped) until the next
//! engine takes the link over (`bpf_link_update`, atomic) or an operator
//! removes it (`ferrogate xdp detach`).
//!
//! Interface names repeat across network namespaces, so a pin is named by
//! the namespace's inode and the interface index.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;

/// Where ferrogate pins links.
pub const PIN_DIR: &str = "/sys/fs/bpf/ferrogate/links";

fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The pin path of `iface` in the current network namespace (None when
/// the interface does not exist).
pub fn pin_path(iface: &str) -> Option<PathBuf> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net").ok()?.ino();
    Some(PathBuf::from(format!("{PIN_DIR}/{ns}-{}", ifindex(iface)?)))
}

/// Opens the link pinned for `iface`, if there is one; a pin that no
/// longer holds an XDP link is removed.
pub(crate) fn pinned_link(iface: &str) -> Option<(XdpLink, PathBuf)> {
    let path = pin_path(iface)?;
    if !path.exists() {
        return None;
    }
    let link = PinnedLink::from_pin(&path)
        .map_err(|e| e.to_string())
        .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()));
    match link {
        Ok(l) => Some((l, path)),
        Err(e) => {
            tracing::warn!(iface, pin = %path.display(), error = %e, "removing an unusable pinned XDP link");
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

/// Pins `link` for `iface`; returns the link (still owned) and the path.
/// aya's pin consumes the link: on an error it is gone (the program
/// detached) and the caller attaches again.
pub(crate) fn pin(iface: &str, link: XdpLink) -> Result<(XdpLink, PathBuf), String> {
    let path = pin_path(iface).ok_or_else(|| format!("interface {iface} not found"))?;
    std::fs::create_dir_all(PIN_DIR).map_err(|e| format!("creating {PIN_DIR}: {e}"))?;
    let _ = std::fs::remove_file(&path);
    let fd: FdLink = link
        .try_into()
        .map_err(|e| format!("not a BPF link (netlink attach?): {e}"))?;
    let pinned = fd
        .pin(&path)
        .map_err(|e| format!("pinning at {}: {e}", path.display()))?;
    let link = XdpLink::try_from(FdLink::from(pinned))
        .map_err(|e| format!("re-wrapping the pinned link: {e}"))?;
    Ok((link, path))
}

/// Removes `iface`'s pin: the program detaches once no process holds the
/// link. Returns whether a pin existed.
pub fn remove_pin(iface: &str) -> std::io::Result<bool> {
    let Some(path) = pin_path(iface) else {
        return Ok(false);
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
