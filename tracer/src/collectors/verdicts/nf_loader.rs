//! Loading and linking BPF_PROG_TYPE_NETFILTER programs, which aya 0.14 does
//! not know: the programs are taken from the same ELF object, their map
//! references are pointed at the maps aya already created, and they are
//! loaded and linked with the raw `bpf(2)` commands. Links are fd-owned, so
//! they go away with tracer, SIGKILL included.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};

use crate::{
    model::{Hook, IpFamily},
    sys::bpf::{self, BPF_NETFILTER, BPF_PROG_TYPE_NETFILTER},
};

/// The fd of an aya map, whatever its kind.
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// Netfilter programs loaded into the kernel, by name.
pub struct NfPrograms {
    fds: HashMap<String, OwnedFd>,
}

impl NfPrograms {
    /// Loads programs `names` from `object` with the netfilter program type,
    /// using the maps of `ebpf` (the same object, already loaded by aya).
    pub fn load(object: &[u8], ebpf: &Ebpf, names: &[&str]) -> Result<Self> {
        let mut obj = aya_obj::Object::parse(object).context("parse eBPF object")?;
        let fds: HashMap<&str, RawFd> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name, map_fd(map)?.as_raw_fd())))
            .collect();
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let maps: Vec<(String, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        // Maps these programs do not use may be missing (taken already): an
        // invalid fd there only lands in programs that are never loaded.
        obj.relocate_maps(
            maps.iter()
                .map(|(n, m)| (n.as_str(), fds.get(n.as_str()).copied().unwrap_or(-1), m)),
            &text_sections,
        )
        .map_err(|e| anyhow!("relocate maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| anyhow!("relocate calls: {e}"))?;
        let mut loaded = HashMap::new();
        for &name in names {
            let prog = obj
                .programs
                .get(name)
                .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
            let insns = &obj.functions[&prog.function_key()].instructions;
            let fd = load_one(name, insns)?;
            loaded.insert(name.to_string(), fd);
        }
        Ok(NfPrograms { fds: loaded })
    }

    /// Links program `name` at (`family`, `hook`, `priority`) in the calling
    /// thread's network namespace.
    pub fn link(&self, name: &str, family: IpFamily, hook: Hook, priority: i32) -> Result<OwnedFd> {
        let prog = self
            .fds
            .get(name)
            .ok_or_else(|| anyhow!("netfilter program {name} not loaded"))?;
        let hooknum = hook
            .raw()
            .ok_or_else(|| anyhow!("{hook} is not an IP hook"))?;
        bpf::link_netfilter(prog.as_fd(), family.nfproto(), hooknum, priority)
            .with_context(|| format!("link {name} at {family} {hook} priority {priority}"))
    }
}

fn load_one(name: &str, insns: &[aya_obj::generated::bpf_insn]) -> Result<OwnedFd> {
    match bpf::prog_load(BPF_PROG_TYPE_NETFILTER, BPF_NETFILTER, name, insns) {
        Ok(fd) => Ok(fd),
        Err((e, log)) => {
            if e.raw_os_error() == Some(libc::EINVAL) && log.is_empty() {
                bail!(
                    "the kernel cannot load netfilter BPF programs ({e}; needs Linux >= 6.4 \
                     with CONFIG_NETFILTER_BPF_LINK)"
                );
            }
            bail!(
                "kernel refused netfilter program {name}: {e} (verifier: {})",
                crate::collectors::loader::verifier_error(&log)
            )
        }
    }
}
