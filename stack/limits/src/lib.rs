//! The L7 half of ferrogate's quota model: request rate limits whose
//! buckets are shared by every worker of an engine, and the detection of
//! sources that exceed a limit by a factor for long enough to be pushed
//! into the XDP deny set.
//!
//! Sans-IO: callers pass the time (`now_us`, one clock for all workers);
//! nothing here reads a clock, sleeps or makes a syscall. Per request: one
//! keyed hash, a short probe of a fixed table, one compare-and-swap; no
//! allocation, no lock.
//!
//! Why one shared table of atomics rather than per-worker buckets that
//! reconcile: a worker owns the flows whose SYN its queue received, so one
//! client's connections spread over every worker; per-worker buckets would
//! each admit the whole rate until a reconciliation, and reconciling often
//! enough to hold ±5 % costs more than an uncontended CAS on the slot the
//! key hashes to. The XDP tier keeps its buckets the same way (one shared
//! LRU hash), so both tiers have the same semantics.

mod escalate;
mod gcra;
mod table;

pub use escalate::{EscalateSpec, Escalation, EscalationQueue};
pub use gcra::{Decision, LimitSpec, MAX_BURST, MAX_RATE, MIN_RATE};
pub use table::{Outcome, Quota, TABLE_SLOTS};
