//! ferrogate's control side: the TOML configuration, the lab, and the
//! commands of the `ferrogate` binary.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod fleet;
pub mod lab;
mod latest_file;
pub mod metrics;
pub mod run;
pub mod sd_notify;
pub mod snapshot;
pub mod status;
pub mod supervise;
pub mod upgrade;
