//! tracer: per-flow datapath counters for container overlay networks.
//!
//! - [`sys`]: the kernel interfaces (bpf(2), netlink, namespaces, BTF, kallsyms);
//! - [`topology`]: namespaces and devices to trace, and the MTU arithmetic of the path;
//! - [`collectors`]: one folder per kind of data, each loading its eBPF programs,
//!   draining its maps and naming its rows;
//! - [`rules`]: netfilter rules and nftables tracing;
//! - [`analysis`]: what the rows say together (fragment loss, which rule dropped, paths);
//! - [`filter`]: the filter language of `--filter` and the live view;
//! - [`output`]: JSON lines, text lines, the live view;
//! - [`session`]: one run, from the command line to the totals.

pub mod analysis;
pub mod cli;
pub mod collectors;
pub mod filter;
pub mod model;
pub mod output;
pub mod rules;
pub mod session;
pub mod sys;
pub mod topology;
