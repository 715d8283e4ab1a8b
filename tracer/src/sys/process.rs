//! Other processes: whether one is (still) the same process.

use anyhow::{Context as _, Result, anyhow};

/// Whether process `pid` exists (it may belong to another user).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the pid, it names a process even after the pid is reused.
pub fn start_time(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_stable_start_time() {
        let me = std::process::id();
        assert!(alive(me));
        let t = start_time(me).unwrap();
        assert!(t > 0);
        assert_eq!(start_time(me).unwrap(), t);
        assert!(start_time(u32::MAX).is_err());
    }
}
