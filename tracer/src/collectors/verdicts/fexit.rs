//! Verdicts on kernels without netfilter BPF programs (before 6.4): fentry
//! and fexit programs on nf_tables' `nft_do_chain`, which runs every base
//! chain and returns its verdict. nf_tables is a module on distribution kernels, so
//! the program is loaded against the module's own BTF, and the layouts of
//! its structs come from there (module BTF exists since Linux 5.11).

use std::{os::fd::OwnedFd, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::Ebpf;
use tracer_ebpf::Offsets;

use super::{chains, raw};
use crate::sys::{
    bpf::{self, BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, BPF_TRACE_FEXIT, ProgType},
    btf::member_offset,
    kernel::Kernel,
};

/// Loaded and attached in this order: an exit without its entry is ignored,
/// the other way round would leave calls open.
const PROGRAMS: [(&str, u32); 2] = [
    ("nft_chain_exit", BPF_TRACE_FEXIT),
    ("nft_chain_entry", BPF_TRACE_FENTRY),
];
const MODULE: &str = "nf_tables";
const FUNCTION: &str = "nft_do_chain";

/// The programs, by name, and their links.
pub type Attached = (Vec<(&'static str, OwnedFd)>, Vec<OwnedFd>);

/// nf_tables' BTF object and what the program needs from it.
pub struct NfTables {
    btf: OwnedFd,
    /// BTF type id of `nft_do_chain`.
    function: u32,
    /// `nft_pktinfo.skb`, `.state` (`.xt.state` before 5.13), and
    /// `nft_base_chain.chain`, `.ops.priority`.
    offsets: [u32; 4],
}

impl NfTables {
    /// Finds nf_tables' BTF, loading the module if nothing did yet (an
    /// nftables request loads it, as `nft list` would).
    pub fn find(kernel: &Kernel) -> Result<Self> {
        let path = Path::new("/sys/kernel/btf").join(MODULE);
        if !path.exists() {
            let _ = chains::base_chains();
        }
        if !Path::new("/sys/kernel/btf/vmlinux").exists() || !path.exists() {
            return Err(anyhow!(
                "no BTF for the {MODULE} module (module BTF needs Linux >= 5.11 with \
                 CONFIG_DEBUG_INFO_BTF_MODULES, and the module loaded)"
            ));
        }
        let module = btf_rs::Btf::from_split_file(&path, kernel.btf())
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let function = module
            .resolve_ids_by_name(FUNCTION)
            .ok()
            .and_then(|ids| {
                ids.into_iter()
                    .find(|&id| matches!(module.resolve_type_by_id(id), Ok(btf_rs::Type::Func(_))))
            })
            .ok_or_else(|| anyhow!("{FUNCTION} is not in {MODULE}'s BTF"))?;
        let state = member_offset(&module, "nft_pktinfo", "state")
            .or_else(|_| member_offset(&module, "nft_pktinfo", "xt.state"))?;
        let offsets = [
            member_offset(&module, "nft_pktinfo", "skb")?,
            state,
            member_offset(&module, "nft_base_chain", "chain")?,
            member_offset(&module, "nft_base_chain", "ops.priority")?,
        ];
        let btf = bpf::kernel_btf_by_name(MODULE)
            .ok_or_else(|| anyhow!("the kernel has no loaded BTF object {MODULE}"))?;
        Ok(NfTables {
            btf,
            function,
            offsets,
        })
    }

    /// Writes the offsets the program reads into the programs' configuration.
    pub fn configure(&self, offsets: &mut Offsets) {
        [
            offsets.nft_pkt_skb,
            offsets.nft_pkt_state,
            offsets.nft_base_chain,
            offsets.nft_base_priority,
        ] = self.offsets;
    }

    /// Loads the programs and attaches them: the programs by name, and the
    /// links, all fd-owned.
    pub fn attach(&self, ebpf: &Ebpf) -> Result<Attached> {
        use std::os::fd::AsFd as _;
        let (mut programs, mut links) = (Vec::new(), Vec::new());
        for (name, attach_type) in PROGRAMS {
            let kind = ProgType {
                prog_type: BPF_PROG_TYPE_TRACING,
                expected_attach_type: attach_type,
                attach_btf: Some((self.function, Some(self.btf.as_fd()))),
            };
            let prog = raw::load(ebpf, &[name], kind)?
                .remove(name)
                .ok_or_else(|| anyhow!("{name} not loaded"))?;
            let link = bpf::attach_tracing(prog.as_fd())
                .with_context(|| format!("attach {name} to {FUNCTION}"))?;
            programs.push((name, prog));
            links.push(link);
        }
        Ok((programs, links))
    }
}
