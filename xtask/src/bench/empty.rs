//! Arm F: an eBPF program that returns at once, on the TC hooks tracer
//! uses. Its ns per run is what every TC program pays under BPF statistics
//! whatever it does (the two clock reads around the run, the indirect call):
//! tracer's own cost per run is its figure less this one, measured on the
//! same path under the same load.
//!
//! Loaded with the bpf() syscall from two instructions and attached by tcx
//! links in a child process (`cargo xtask bench-empty-tc`), so that it has
//! a pid of its own like the other arms' tools and ends with it.

use std::{
    ffi::CString,
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

/// The program's name, as `bpftool prog show` lists it: it starts with
/// "tc_" as tracer's do, so the bench counts it as a per-packet program.
pub const PROG_NAME: &str = "tc_empty";

/// What the child prints once every link is in place.
pub const READY: &str = "attached";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `r0 = -1` (TCX_NEXT: on to the next program), `exit`.
const INSNS: [u64; 2] = [0xffff_ffff_0000_00b7, 0x95];

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, zero-padded: the kernel
/// wants the bytes past the fields it knows zero.
#[repr(C)]
struct ProgLoad {
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
    rest: [u8; 64],
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr` for tcx (no relative
/// program, any revision: the link goes last).
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    rest: [u8; 48],
}

fn bpf<T>(cmd: libc::c_long, attr: &T, what: &str) -> Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` member of `size_of::<T>()` bytes
    // for `cmd`, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if fd < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load() -> Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..PROG_NAME.len()].copy_from_slice(PROG_NAME.as_bytes());
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: INSNS.len() as u32,
        insns: INSNS.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        rest: [0; 64],
    };
    bpf(BPF_PROG_LOAD, &attr, "load the empty TC program")
}

/// Runs `f` in network namespace `ns` (a name under /run/netns), then
/// returns this thread to the namespace it was in.
fn in_netns<R>(ns: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let here = File::open("/proc/thread-self/ns/net").context("open own netns")?;
    let there =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("open netns {ns}"))?;
    // SAFETY: setns on fds we hold open.
    if unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("enter netns {ns}: {}", std::io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above.
    if unsafe { libc::setns(here.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("leave netns {ns}: {}", std::io::Error::last_os_error());
    }
    r
}

/// Attaches the empty program to ingress and egress of each `netns/device`,
/// says [`READY`] on stdout, and holds the links until stdin closes (the
/// parent ended) or a signal ends the process: the links go with it.
pub fn hold(devices: &[String]) -> Result<()> {
    let prog = load()?;
    let mut links = Vec::new();
    for d in devices {
        let Some((ns, dev)) = d.split_once('/') else {
            bail!("{d}: expected NETNS/DEVICE");
        };
        in_netns(ns, || {
            let name = CString::new(dev)?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no device {dev} in {ns}");
            }
            for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                let attr = LinkCreate {
                    prog_fd: prog.as_raw_fd() as u32,
                    target_ifindex: ifindex,
                    attach_type,
                    flags: 0,
                    rest: [0; 48],
                };
                links.push(bpf(BPF_LINK_CREATE, &attr, &format!("tcx link on {d}"))?);
            }
            Ok(())
        })?;
    }
    let mut out = std::io::stdout();
    writeln!(out, "{READY}")?;
    out.flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(links);
    Ok(())
}
