//! Asking the kernel what is attached to a device, to check that tracer
//! leaves nothing behind.

use std::ffi::CString;

use anyhow::{Result, bail};

use crate::traffic::in_netns;

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// The `query` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Program and link ids attached with tcx to `dev` in namespace `ns`, both directions.
pub fn tcx_attached(ns: &str, dev: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let dev = CString::new(dev)?;
    in_netns(ns, || {
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        if ifindex == 0 {
            bail!("no device {dev:?} in {ns}");
        }
        let mut progs = Vec::new();
        let mut links = Vec::new();
        for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            let mut p = [0u32; 64];
            let mut l = [0u32; 64];
            let mut attr = QueryAttr {
                target_ifindex: ifindex,
                attach_type,
                prog_ids: p.as_mut_ptr() as u64,
                link_ids: l.as_mut_ptr() as u64,
                count: 64,
                ..Default::default()
            };
            // SAFETY: attr is a prefix of bpf_attr for BPF_PROG_QUERY with valid buffers.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_PROG_QUERY,
                    &mut attr as *mut QueryAttr,
                    size_of::<QueryAttr>() as u32,
                )
            };
            if rc < 0 {
                bail!(
                    "BPF_PROG_QUERY on {dev:?}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let n = attr.count as usize;
            progs.extend_from_slice(&p[..n]);
            links.extend(l[..n].iter().filter(|&&id| id != 0));
        }
        Ok((progs, links))
    })?
}

/// True if `bpftool <object> show id <id>` still finds it (`object`: prog or link).
pub fn bpftool_finds(object: &str, id: u32) -> bool {
    crate::cmd::run("bpftool", &[object, "show", "id", &id.to_string()]).is_ok()
}

/// A BPF link held open by a process, from its /proc fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLink {
    pub link_type: String,
    pub link_id: u32,
    pub prog_id: u32,
}

/// Every BPF link process `pid` holds, with the program behind it.
pub fn links_held_by(pid: u32) -> Result<Vec<HeldLink>> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        if let (Some(link_type), Some(link_id), Some(prog_id)) =
            (field("link_type"), field("link_id"), field("prog_id"))
        {
            links.push(HeldLink {
                link_type,
                link_id: link_id.parse()?,
                prog_id: prog_id.parse()?,
            });
        }
    }
    Ok(links)
}
