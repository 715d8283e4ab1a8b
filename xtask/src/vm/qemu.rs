//! Booting a kernel in qemu and following its serial console until the guest
//! powers off or the hard timeout kills qemu.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    guest::{END, READY, START},
    initramfs::{HANDOVER, RESULTS_TAG, ROOT_TAG},
};

/// Console lines worth reporting even when the tests pass.
const TROUBLE: &[&str] = &[
    "Kernel panic",
    "BUG: ",
    "Oops: ",
    "soft lockup",
    "hung_task",
    "detected stalls",
    "self-detected stall",
    "WARNING: CPU",
    "tracer-vm: init failed",
];

/// What to boot.
pub struct Boot<'a> {
    pub name: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Shared writable with the guest.
    pub share: &'a Path,
    /// The whole serial console goes here.
    pub console: &'a Path,
    pub timeout: Duration,
}

#[derive(Debug)]
pub enum Outcome {
    /// The guest powered off by itself.
    PoweredOff,
    /// qemu was killed at the timeout, while this job and test ran.
    TimedOut {
        job: Option<String>,
        test: Option<String>,
    },
    /// qemu exited with an error.
    Failed(String),
}

#[derive(Debug)]
pub struct Run {
    pub outcome: Outcome,
    /// From starting qemu to the second stage being ready.
    pub boot: Option<Duration>,
    pub elapsed: Duration,
    /// Wall time of each job, and of each test (job, test), from the console.
    pub jobs: Vec<(String, Duration)>,
    pub tests: Vec<(String, String, Duration)>,
    /// Console lines that tell of kernel trouble.
    pub trouble: Vec<String>,
    /// The last console lines, for a guest that never got ready.
    pub tail: Vec<String>,
}

enum Event {
    Line(String),
    /// A line libtest started and will end when the test is done.
    Partial(String),
    Eof,
}

/// True if this machine's /dev/kvm can run an unmodified distribution kernel.
/// PVM (kvm_pvm) cannot: such a guest hangs early in boot.
pub fn kvm_usable() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists()
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

pub fn run(boot: &Boot) -> Result<Run> {
    let kvm = kvm_usable();
    let mut cmd = Command::new("qemu-system-x86_64");
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // la57 (5-level paging) only slows the emulated MMU down.
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max,la57=off"]);
    }
    cmd.args([
        "-smp",
        "2",
        "-m",
        "2G",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(boot.vmlinuz)
    .arg("-initrd")
    .arg(boot.initramfs)
    // no_timer_check: under TCG the IO-APIC timer check can fail and panic.
    // random.trust_cpu: 5.10's getrandom would otherwise block at boot.
    .args([
        "-append",
        "console=ttyS0 panic=-1 no_timer_check random.trust_cpu=on mitigations=off",
    ])
    .arg("-virtfs")
    .arg(format!(
        "local,path=/,mount_tag={ROOT_TAG},security_model=none,readonly=on,multidevs=remap"
    ))
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag={RESULTS_TAG},security_model=none",
        boot.share.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("start qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut log = fs::File::create(boot.console)
        .with_context(|| format!("create {}", boot.console.display()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        let mut partial_sent = false;
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = log.write_all(&buf[..n]);
            for &b in &buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    line.clear();
                    partial_sent = false;
                    if tx.send(Event::Line(text)).is_err() {
                        return;
                    }
                } else {
                    line.push(b);
                }
            }
            if !partial_sent && line.starts_with(b"test ") && line.ends_with(b" ... ") {
                partial_sent = true;
                let text = String::from_utf8_lossy(&line).to_string();
                let _ = tx.send(Event::Partial(text));
            }
        }
        let _ = tx.send(Event::Eof);
    });

    let deadline = start + boot.timeout;
    let mut run = Run {
        outcome: Outcome::PoweredOff,
        boot: None,
        elapsed: Duration::ZERO,
        jobs: Vec::new(),
        tests: Vec::new(),
        trouble: Vec::new(),
        tail: Vec::new(),
    };
    let mut job: Option<(String, Instant)> = None;
    let mut test: Option<(String, Instant)> = None;
    let prefix = format!("[{}] ", boot.name);
    let timed_out = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match rx.recv_timeout(left) {
            Ok(e) => e,
            Err(mpsc::RecvTimeoutError::Timeout) => break true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
        };
        let now = Instant::now();
        match event {
            Event::Eof => break false,
            Event::Partial(text) => {
                print!("{prefix}{text}");
                let _ = std::io::stdout().flush();
                test = Some((test_name(&text).to_string(), now));
            }
            Event::Line(text) => {
                if TROUBLE.iter().any(|t| text.contains(t)) && run.trouble.len() < 20 {
                    run.trouble.push(text.clone());
                }
                if run.boot.is_none() {
                    run.tail.push(text.clone());
                    if run.tail.len() > 40 {
                        run.tail.remove(0);
                    }
                    if text.starts_with(READY) {
                        run.boot = Some(now - start);
                        println!(
                            "{prefix}{text} ({:.1} s after qemu started)",
                            (now - start).as_secs_f64()
                        );
                    } else if text.contains(HANDOVER) {
                        println!("{prefix}{text}");
                    }
                    continue;
                }
                // The rest of a line whose start was shown as a partial line.
                match test.take() {
                    Some((name, t0)) if text.starts_with("test ") && text.contains(" ... ") => {
                        println!("{}", text.split_once(" ... ").map_or("", |(_, r)| r));
                        if let Some((j, _)) = &job {
                            run.tests.push((j.clone(), name, now - t0));
                        }
                        continue;
                    }
                    other => test = other,
                }
                if let Some(label) = text.strip_prefix(START) {
                    job = Some((label.to_string(), now));
                } else if text.starts_with(END)
                    && let Some((label, t0)) = job.take()
                {
                    run.jobs.push((label, now - t0));
                }
                println!("{prefix}{text}");
            }
        }
    };
    if timed_out {
        let _ = child.kill();
        run.outcome = Outcome::TimedOut {
            job: job.map(|(j, _)| j),
            test: test.map(|(t, _)| t),
        };
    }
    let status = child.wait().context("wait for qemu")?;
    run.elapsed = start.elapsed();
    let stderr = err_reader.join().unwrap_or_default();
    if !timed_out && !status.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        run.outcome = Outcome::Failed(format!("qemu exited with {status}: {}", last.trim()));
    }
    Ok(run)
}

/// "test foo::bar ... " -> "foo::bar"
fn test_name(partial: &str) -> &str {
    partial
        .strip_prefix("test ")
        .and_then(|s| s.split(" ... ").next())
        .unwrap_or(partial)
}

/// A fresh results share and console log for one VM run, under `root`.
pub fn prepare_dir(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let _ = fs::remove_dir_all(root);
    let share = root.join("share");
    fs::create_dir_all(share.join("out")).with_context(|| format!("create {}", share.display()))?;
    Ok((share, root.join("console.log")))
}
