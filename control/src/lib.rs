//! ferrogate's control side: the TOML configuration, the lab, and the
//! commands of the `ferrogate` binary.

pub mod config;
pub mod demo;
pub mod lab;
pub mod run;
