//! Loading and linking BPF_PROG_TYPE_NETFILTER programs, which aya 0.14 does
//! not know: the programs are taken from the same ELF object, their map
//! references are pointed at the maps aya already created, and they are
//! loaded and linked with the raw `bpf(2)` commands. Links are fd-owned, so
//! they go away with tracer, SIGKILL included.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct NfLinkAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

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
        let license = CString::new("GPL").expect("no NUL");
        let mut loaded = HashMap::new();
        for &name in names {
            let prog = obj
                .programs
                .get(name)
                .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
            let insns = &obj.functions[&prog.function_key()].instructions;
            let fd = load_one(name, insns, &license)?;
            loaded.insert(name.to_string(), fd);
        }
        Ok(NfPrograms { fds: loaded })
    }

    /// Links program `name` at (`pf`, `hook`, `priority`) in the calling
    /// thread's network namespace.
    pub fn link(&self, name: &str, pf: u8, hook: u8, priority: i32) -> Result<OwnedFd> {
        let prog = self
            .fds
            .get(name)
            .ok_or_else(|| anyhow!("netfilter program {name} not loaded"))?;
        sys_bpf(
            BPF_LINK_CREATE,
            &mut NfLinkAttr {
                prog_fd: prog.as_raw_fd() as u32,
                attach_type: BPF_NETFILTER,
                pf: pf as u32,
                hooknum: hook as u32,
                priority,
                ..Default::default()
            },
        )
        .with_context(|| format!("link {name} at pf {pf} hook {hook} priority {priority}"))
    }
}

fn load_one(
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
    license: &CString,
) -> Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_NETFILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_NETFILTER,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            // Load again with the verifier's log, to say why.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = sys_bpf(BPF_PROG_LOAD, &mut attr);
            let log = String::from_utf8_lossy(&log);
            let last = log
                .trim_end_matches('\0')
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no verifier log")
                .to_string();
            if e.raw_os_error() == Some(libc::EINVAL) && log.trim_end_matches('\0').is_empty() {
                bail!(
                    "the kernel cannot load netfilter BPF programs ({e}; needs Linux >= 6.4 \
                     with CONFIG_NETFILTER_BPF_LINK)"
                );
            }
            bail!("kernel refused netfilter program {name}: {e} (verifier: {last})")
        }
    }
}
