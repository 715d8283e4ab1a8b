//! Helpers shared by the xtask commands and tracer's integration tests.

pub mod bpf;
pub mod cmd;
pub mod docker;
pub mod lab;
pub mod peers;
pub mod tracer;
pub mod traffic;
