//! Verdicts where neither netfilter BPF programs (6.4) nor fentry on
//! nf_tables (module BTF, 5.11) exist, as on Debian 11's 5.10: kprobes on
//! `nf_hook_slow`, whose arguments are in vmlinux's BTF, and on
//! `nft_do_chain` with a kretprobe for its verdict. A chain's priority comes
//! from the hook entry that runs it, so no nf_tables layout is needed.

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, programs::KProbe};
use tracer_ebpf::Offsets;

use crate::{
    collectors::loader,
    sys::btf::{member_offset, struct_size},
};

/// Attached in this order: returns without their entry are ignored, the
/// other way round would leave calls open.
const PROBES: [(&str, &str); 4] = [
    ("nft_chain_kretprobe", "nft_do_chain"),
    ("nf_hook_slow_exit", "nf_hook_slow"),
    ("nf_hook_slow_entry", "nf_hook_slow"),
    ("nft_chain_kprobe", "nft_do_chain"),
];

/// The programs' names, for the metrics of their run time.
pub const PROGRAMS: [&str; 4] = [PROBES[0].0, PROBES[1].0, PROBES[2].0, PROBES[3].0];

/// What the kprobes read, from vmlinux's BTF.
pub struct NfKprobes {
    /// `nf_hook_entries.num_hook_entries`, `.hooks`, `sizeof(struct
    /// nf_hook_entry)`, `nf_hook_entry.priv`, `nf_hook_ops.priority`.
    offsets: [u32; 5],
}

impl NfKprobes {
    pub fn find(btf: &btf_rs::Btf) -> Result<Self> {
        Ok(NfKprobes {
            offsets: [
                member_offset(btf, "nf_hook_entries", "num_hook_entries")?,
                member_offset(btf, "nf_hook_entries", "hooks")?,
                struct_size(btf, "nf_hook_entry")?,
                member_offset(btf, "nf_hook_entry", "priv")?,
                member_offset(btf, "nf_hook_ops", "priority")?,
            ],
        })
    }

    /// Writes the offsets the programs read into their configuration.
    pub fn configure(&self, offsets: &mut Offsets) {
        [
            offsets.hook_entries_num,
            offsets.hook_entries_hooks,
            offsets.hook_entry_size,
            offsets.hook_entry_priv,
            offsets.hook_ops_priority,
        ] = self.offsets;
    }

    /// Loads and attaches the probes. They stay attached as long as `ebpf`
    /// holds them, and a process's perf events close when it dies, so
    /// nothing outlives tracer.
    pub fn attach(&self, ebpf: &mut Ebpf) -> Result<()> {
        // nft_do_chain is in the nf_tables module: it must be loaded.
        let _ = super::chains::base_chains();
        let attached = PROBES.iter().try_for_each(|&(name, function)| {
            let program: &mut KProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} not found"))?
                .try_into()?;
            program.load().map_err(|e| loader::explain(name, e))?;
            program
                .attach(function, 0)
                .with_context(|| format!("kprobe {name} on {function}"))?;
            Ok(())
        });
        if attached.is_err() {
            // All or none: what did attach would count nothing alone.
            for (name, _) in PROBES {
                if let Some(Ok(p)) = ebpf.program_mut(name).map(<&mut KProbe>::try_from) {
                    let _ = p.unload();
                }
            }
        }
        attached
    }
}
