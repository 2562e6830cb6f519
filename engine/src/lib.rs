//! ferrogate's data plane: packet I/O backends behind one trait, the pinned
//! run-to-completion workers, worker-to-worker hand-off and snapshot swap.

pub mod afpacket;
pub mod afxdp;
pub mod config;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod engine;
pub mod escalation;
pub mod handoff;
pub mod io;
pub mod io_error;
pub mod memio;
pub mod netdev;
pub mod relay;
pub mod stats;
pub mod tap;
mod upgrade;
pub mod wake;
mod worker;

pub use config::{BackendChoice, DpdkSettings, EngineConfig, PollingMode, PortPlan};
pub use engine::{Engine, EngineError, MEMORY_MAC, ReloadReport};
/// Topology and placement, for the control plane (`control → engine`).
pub use ferrogate_numa as numa;
pub use io::{BackendKind, IoStats, PacketIo};
pub use memio::{MemPeer, MemPort, mem_port};
pub use stats::{EngineStats, EscalationStats, PluginReading, WorkerStats};
pub use upgrade::{HandedOver, Predecessor};
