//! Asking the kernel what is attached to a device, to check that tracer
//! leaves nothing behind; and a program that only returns, attached to
//! devices by tcx links (the bench's arm F).

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

use crate::traffic::in_netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
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

/// Runs `f` with the ifindex of `dev`, inside namespace `ns`.
fn with_ifindex<T: Send>(
    ns: &str,
    dev: &str,
    f: impl FnOnce(u32) -> Result<T> + Send,
) -> Result<T> {
    let name = CString::new(dev)?;
    in_netns(ns, || {
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no device {dev} in {ns}");
        }
        f(ifindex)
    })?
}

/// Program and link ids attached with tcx to `dev` in namespace `ns`, both directions.
pub fn tcx_attached(ns: &str, dev: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    with_ifindex(ns, dev, |ifindex| {
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
                    "BPF_PROG_QUERY on {dev}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let n = attr.count as usize;
            progs.extend_from_slice(&p[..n]);
            links.extend(l[..n].iter().filter(|&&id| id != 0));
        }
        Ok((progs, links))
    })
}

/// bpf(2) with a command whose attribute returns a new fd.
fn bpf_fd<T>(cmd: libc::c_long, attr: &T, what: &str) -> Result<OwnedFd> {
    // SAFETY: `attr` is the `union bpf_attr` member of `size_of::<T>()`
    // bytes for `cmd`, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, zero-padded: the kernel
/// wants the bytes past the fields it knows zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    rest_before_name: [u8; 24],
    prog_name: [u8; 16],
    rest: [u8; 64],
}

/// A TC program named `name` (at most 15 bytes) that only returns
/// TCX_NEXT: `r0 = -1`, `exit`.
pub fn load_return_only(name: &str) -> Result<OwnedFd> {
    const INSNS: [u64; 2] = [0xffff_ffff_0000_00b7, 0x95];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: INSNS.len() as u32,
        insns: INSNS.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        rest_before_name: [0; 24],
        prog_name,
        rest: [0; 64],
    };
    bpf_fd(BPF_PROG_LOAD, &attr, &format!("load TC program {name}"))
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr` for tcx (no relative
/// program, any revision: the link goes last).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    rest: [u8; 48],
}

/// tcx links of `prog` on ingress and egress of `dev` in namespace `ns`:
/// attached while the fds live.
pub fn tcx_link_both(ns: &str, dev: &str, prog: &OwnedFd) -> Result<Vec<OwnedFd>> {
    with_ifindex(ns, dev, |ifindex| {
        [BPF_TCX_INGRESS, BPF_TCX_EGRESS]
            .into_iter()
            .map(|attach_type| {
                let attr = LinkCreateAttr {
                    prog_fd: prog.as_raw_fd() as u32,
                    target_ifindex: ifindex,
                    attach_type,
                    flags: 0,
                    rest: [0; 48],
                };
                bpf_fd(BPF_LINK_CREATE, &attr, &format!("tcx link on {ns}/{dev}"))
            })
            .collect()
    })
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
