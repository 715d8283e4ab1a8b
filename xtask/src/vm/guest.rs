//! The guest's second stage: a bash script, written into the results share
//! for each run, that finishes the guest's mounts and runs the test binaries,
//! each output going to the console and to a file, then powers off.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use super::initramfs::RESULTS_MOUNT;

/// Marks on the console the host follows.
pub const READY: &str = "tracer-vm: ready";
pub const START: &str = "tracer-vm: start ";
pub const END: &str = "tracer-vm: end ";

/// One program the guest runs, its output saved as `out/<label>.log` and its
/// exit status as `out/<label>.rc` in the results share.
#[derive(Debug, Clone)]
pub struct Job {
    pub label: String,
    /// Working directory (cargo runs a test binary in its package's directory).
    pub dir: PathBuf,
    pub argv: Vec<String>,
}

/// The script: mounts, module loading, then `jobs`, each under `timeout`.
pub fn script(jobs: &[Job], timeout: Duration) -> String {
    let mut s = format!(
        r#"#!/bin/bash
# Stage 2 of the tracer test VM, written by `cargo xtask test --kernel`.
S={RESULTS_MOUNT}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mkdir -p /dev/pts /dev/shm "$S/out"
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# What udev makes on a real host. 5.10's execveat(fd, "", AT_EMPTY_PATH)
# fails with ENOENT without /dev/fd, and runc re-executes itself that way.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
ip link set lo up
# Hosts that run containers have it (Docker loads it); the tests set its sysctls.
modprobe br_netfilter
# Only errors on the console from here: kernel chatter would split test lines.
dmesg -n 4
echo "{READY} $(uname -r)"
status=0
job() {{
    label=$1 dir=$2
    shift 2
    echo "{START}$label"
    (cd "$dir" && exec timeout -k 10 {secs} "$@") 2>&1 | tee "$S/out/$label.log"
    rc=${{PIPESTATUS[0]}}
    echo "$rc" > "$S/out/$label.rc"
    echo "{END}$label rc=$rc"
    [ "$rc" = 0 ] || status=1
}}
"#,
        secs = timeout.as_secs().max(1),
    );
    for job in jobs {
        let mut line = format!(
            "job {} {}",
            quote(&job.label),
            quote(&job.dir.to_string_lossy())
        );
        for a in &job.argv {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let _ = writeln!(s, "{line}");
    }
    s.push_str(
        r#"dmesg > "$S/dmesg.txt"
echo "$status" > "$S/status"
sync
echo o > /proc/sysrq-trigger
sleep 30
"#,
    );
    s
}

/// Single-quoted for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_quoted() {
        let s = script(
            &[Job {
                label: "cli".into(),
                dir: "/w/tracer".into(),
                argv: vec!["/t/cli-1".into(), "it's".into()],
            }],
            Duration::from_secs(60),
        );
        assert!(s.contains(r"job 'cli' '/w/tracer' '/t/cli-1' 'it'\''s'"));
        assert!(s.contains("timeout -k 10 60 "));
    }
}
