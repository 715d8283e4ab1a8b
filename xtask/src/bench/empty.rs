//! Arm F: an eBPF program that returns at once, on the TC hooks tracer
//! uses. Its ns per run is what every TC program pays under BPF statistics
//! whatever it does (the two clock reads around the run, the indirect call):
//! tracer's own cost per run is its figure less this one, measured on the
//! same path under the same load.
//!
//! Held by a child process (`cargo xtask bench-empty-tc`), so that it has a
//! pid of its own like the other arms' tools and ends with it.

use std::io::{Read as _, Write as _};

use anyhow::{Result, bail};
use xtask::bpf::{load_return_only, tcx_link_both};

/// The program's name, as `bpftool prog show` lists it: it starts with
/// "tc_" as tracer's do, so the bench counts it as a per-packet program.
pub const PROG_NAME: &str = "tc_empty";

/// What the child prints once every link is in place.
pub const READY: &str = "attached";

/// Attaches the empty program to ingress and egress of each `netns/device`,
/// says [`READY`] on stdout, and holds the links until stdin closes (the
/// parent ended) or a signal ends the process: the links go with it.
pub fn hold(devices: &[String]) -> Result<()> {
    let prog = load_return_only(PROG_NAME)?;
    let mut links = Vec::new();
    for d in devices {
        let Some((ns, dev)) = d.split_once('/') else {
            bail!("{d}: expected NETNS/DEVICE");
        };
        links.extend(tcx_link_both(ns, dev, &prog)?);
    }
    let mut out = std::io::stdout();
    writeln!(out, "{READY}")?;
    out.flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(links);
    Ok(())
}
