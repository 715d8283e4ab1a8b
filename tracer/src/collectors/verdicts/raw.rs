//! Loading programs aya 0.14 cannot: BPF_PROG_TYPE_NETFILTER programs, and
//! fexit programs on a module's function (aya attaches tracing programs to
//! vmlinux functions only). They are taken from the same ELF object, their
//! map references pointed at the maps aya already created, and loaded with
//! the raw `bpf(2)` commands. Links are fd-owned, so they go away with
//! tracer, SIGKILL included.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};

use crate::{
    collectors::loader,
    model::{Hook, IpFamily},
    sys::bpf::{self, BPF_NETFILTER, BPF_PROG_TYPE_NETFILTER, ProgType},
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

/// Loads programs `names` of the object with kind `kind`, using the maps
/// of `ebpf` (the same object, already loaded by aya).
pub fn load(ebpf: &Ebpf, names: &[&str], kind: ProgType) -> Result<HashMap<String, OwnedFd>> {
    let mut obj = aya_obj::Object::parse(loader::OBJECT).context("parse eBPF object")?;
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
        let fd = bpf::prog_load(kind, name, insns).map_err(|(e, log)| {
            if kind.prog_type == BPF_PROG_TYPE_NETFILTER
                && e.raw_os_error() == Some(libc::EINVAL)
                && log.is_empty()
            {
                anyhow!(
                    "the kernel cannot load netfilter BPF programs ({e}; needs Linux >= 6.4 \
                     with CONFIG_NETFILTER_BPF_LINK)"
                )
            } else {
                loader::refused(name, &e, &log)
            }
        })?;
        loaded.insert(name.to_string(), fd);
    }
    Ok(loaded)
}

/// Netfilter programs loaded into the kernel, by name.
pub struct NfPrograms {
    fds: HashMap<String, OwnedFd>,
}

impl NfPrograms {
    /// The loaded programs, by name.
    pub fn programs(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.fds
            .iter()
            .map(|(n, fd)| (n.clone(), fd.as_fd()))
            .collect()
    }

    /// Loads programs `names` with the netfilter program type.
    pub fn load(ebpf: &Ebpf, names: &[&str]) -> Result<Self> {
        let kind = ProgType {
            prog_type: BPF_PROG_TYPE_NETFILTER,
            expected_attach_type: BPF_NETFILTER,
            attach_btf: None,
        };
        Ok(NfPrograms {
            fds: load(ebpf, names, kind)?,
        })
    }

    /// Links program `name` at (`family`, `hook`, `priority`) in the calling
    /// thread's network namespace.
    pub fn link(&self, name: &str, family: IpFamily, hook: Hook, priority: i32) -> Result<OwnedFd> {
        let prog = self
            .fds
            .get(name)
            .ok_or_else(|| anyhow!("netfilter program {name} not loaded"))?;
        let Some(hooknum) = hook.raw() else {
            bail!("{hook} is not an IP hook");
        };
        bpf::link_netfilter(prog.as_fd(), family.nfproto(), hooknum, priority)
            .with_context(|| format!("link {name} at {family} {hook} priority {priority}"))
    }
}
