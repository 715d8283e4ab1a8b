//! The kernel interfaces tracer uses, each in one place.

pub mod bpf;
pub mod btf;
pub mod kallsyms;
pub mod kernel;
pub mod netlink;
pub mod netns;

/// Whether process `pid` exists (it may belong to another user).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
