//! The kernel interfaces tracer uses, each in one place.

pub mod bpf;
pub mod btf;
pub mod conntrack;
pub mod kallsyms;
pub mod kernel;
pub mod netlink;
pub mod netns;
pub mod process;
