//! Waking a sleeping worker when another worker hands it frames.
//!
//! A worker that sleeps on its port's fd would otherwise see a hand-off only
//! when its sleep ends (up to the adaptive or interrupt cap). Each worker
//! owns an eventfd it also sleeps on, and says when it sleeps; a sender
//! writes the eventfd once per burst, and only when the receiver sleeps, so a
//! busy mesh makes no syscall for it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};

pub struct Waker {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// The fd a sleeping worker polls for readability beside its port's.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Announces a sleep. The caller must then check its inbound rings and
    /// skip the sleep if any holds a frame: a sender that pushed before this
    /// store may have seen `sleeping == false` and not written the eventfd.
    pub fn going_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        // Orders the store before the caller's ring check (Dekker pattern
        // with the fence in `wake_if_sleeping`).
        fence(Ordering::SeqCst);
    }

    /// Ends a sleep. `signalled`: the eventfd was readable, so its count is
    /// consumed (one read); otherwise no syscall. A write that lands after
    /// this only makes the next sleep return at once, and that one reads it.
    pub fn woke(&self, signalled: bool) {
        self.sleeping.store(false, Ordering::Relaxed);
        if signalled {
            let mut buf = 0u64;
            // SAFETY: reads 8 bytes into a live u64; a non-blocking eventfd
            // with nothing pending returns EAGAIN, which is fine.
            unsafe { libc::read(self.fd(), (&raw mut buf).cast(), 8) };
        }
    }

    /// Called by a sender after it pushed frames: wakes the receiver if it
    /// sleeps. Returns whether it wrote the eventfd.
    pub fn wake_if_sleeping(&self) -> bool {
        // Orders the sender's ring pushes before the load of `sleeping`.
        fence(Ordering::SeqCst);
        if !self.sleeping.load(Ordering::Relaxed) {
            return false;
        }
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; a full
        // counter (EAGAIN) still leaves the fd readable.
        unsafe { libc::write(self.fd(), (&raw const one).cast(), 8) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_error::poll_readable;
    use std::time::{Duration, Instant};

    #[test]
    fn an_awake_worker_gets_no_write_and_a_sleeping_one_is_woken() {
        let w = Waker::new().unwrap();
        assert!(!w.wake_if_sleeping(), "awake: no syscall");
        w.going_to_sleep();
        assert!(w.wake_if_sleeping());
        let t = Instant::now();
        let ready = poll_readable(&[w.fd()], Duration::from_secs(5)).unwrap();
        assert_eq!(ready, 1, "the eventfd woke the poll");
        assert!(t.elapsed() < Duration::from_secs(5));
        w.woke(true);
        // The wake-up was consumed: the next poll times out.
        let t = Instant::now();
        assert_eq!(
            poll_readable(&[w.fd()], Duration::from_millis(20)).unwrap(),
            0
        );
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
