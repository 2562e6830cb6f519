//! `ferrogate-ebpf`: ferrogate's XDP program and its loader.
//!
//! The program (`bpf/ferrogate.bpf.c`, compiled by `build.rs` and embedded)
//! steers frames addressed to service addresses (VIPs) to the AF_XDP socket of
//! the receiving queue, or to the kernel for the AF_PACKET backend, and passes
//! everything else to the host. Malformed frames are counted per reason, and
//! dropped when addressed to a VIP. [`XdpFilter`] loads, configures, attaches
//! and detaches it, registers AF_XDP sockets and reads the counters; it also
//! holds the escalated-sources deny set (sources blocked until an expiry on
//! [`monotonic_ns`]'s clock).
//! [`swfilter`] is the same filter in Rust for backends without XDP (DPDK);
//! `tests/parity.rs` runs one frame corpus through both.

mod clock;
mod counters;
mod error;
mod loader;
pub mod persist;
pub mod rules;
pub mod swfilter;

pub use clock::monotonic_ns;
pub use counters::{Counter, Verdict, XdpCounters};
pub use error::EbpfError;
pub use loader::{
    ApplyReport, CounterTotals, MAX_BLOCKED_SOURCES, MAX_QUEUES, MAX_VIPS, NOT_ALLOWED_RULE,
    OBJECT, OBJECT_PATH, PROGRAM_NAME, XdpConfig, XdpFilter,
};
pub use rules::{CidrAction, CidrRule, FilterRules, L4Rule, RateKey, RateRule};

/// What VIP frames do when the engine's socket for their queue is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Pass to the kernel (which does not own the VIP and drops it quietly).
    #[default]
    Open,
    /// Drop in XDP.
    Closed,
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native, falling back to generic (with a warning) when the driver refuses.
    #[default]
    Auto,
    /// Driver mode (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic mode (`XDP_FLAGS_SKB_MODE`), works on any interface.
    Generic,
}

/// What the program does with frames addressed to a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipAction {
    /// `bpf_redirect_map(xsks, rx_queue)`; a queue without a socket passes to the kernel.
    RedirectToXsk,
    /// Pass to the kernel (the AF_PACKET backend picks them up there).
    PassToKernel,
}
