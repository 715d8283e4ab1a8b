//! Loading the eBPF object with this run's configuration.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier},
};
use tracer_ebpf::Config;

/// The eBPF programs, compiled by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

pub fn load(config: &Config, flow_map_size: u32) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global("CONFIG", config, true)
        .map_max_entries("FLOWS_0", flow_map_size)
        .map_max_entries("FLOWS_1", flow_map_size)
        .load(OBJECT)
        .context("load eBPF object (maps)")
}

/// Loads the TC program `name` into the kernel.
pub fn load_classifier(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()?;
    prog.load().map_err(|e| explain(name, e))
}

/// One line for a program the kernel refused, with the verifier's last words.
pub fn explain(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no verifier log");
            anyhow!("kernel refused eBPF program {name}: {io_error} (verifier: {last})")
        }
        e => anyhow!("load eBPF program {name}: {e}"),
    }
}
