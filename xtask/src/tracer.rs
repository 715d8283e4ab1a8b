//! Running the tracer binary the way a script would: JSON output, a ready
//! file, SIGTERM to stop, totals at exit.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// A tracer process, killed if still running when dropped.
pub struct TracerRun {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    ready: PathBuf,
}

/// What a tracer run printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub rows: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

fn reader(mut r: impl std::io::Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl TracerRun {
    /// Starts `bin args... --output json --ready-file F` and waits until it
    /// has attached everything.
    pub fn start(bin: &Path, args: &[String]) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let ready = std::env::temp_dir().join(format!(
            "tracer-ready-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(bin)
            .args(args)
            .args(["--output", "json", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = reader(child.stdout.take().expect("piped"));
        let stderr = reader(child.stderr.take().expect("piped"));
        let mut run = TracerRun {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            ready,
        };
        // A guard against a hung start, not a timing check: under qemu's TCG
        // loading the programs alone takes tens of seconds.
        let deadline = Instant::now() + Duration::from_secs(600);
        while !run.ready.exists() {
            if let Some(status) = run.child.try_wait()? {
                let stderr = run.stderr.take().expect("once").join().unwrap_or_default();
                bail!(
                    "tracer exited before it was ready ({status}): {}",
                    stderr.trim()
                );
            }
            if Instant::now() > deadline {
                bail!("tracer not ready after 600 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(run)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and collects the output.
    pub fn stop_with(mut self, signal: i32) -> Result<Finished> {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("tracer did not exit within 300 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.stdout.take().expect("once").join().unwrap_or_default();
        let stderr = self.stderr.take().expect("once").join().unwrap_or_default();
        let rows = stdout
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| anyhow!("bad JSON line {l:?}: {e}")))
            .collect::<Result<Vec<Value>>>()?;
        Ok(Finished {
            status,
            rows,
            stdout,
            stderr,
        })
    }

    /// SIGTERM: the normal way to stop tracer.
    pub fn stop(self) -> Result<Finished> {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for TracerRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.ready);
    }
}

impl Finished {
    /// Rows of `type` with `"scope":"total"`.
    pub fn totals(&self, r#type: &str) -> Vec<&Value> {
        self.rows
            .iter()
            .filter(|r| r["type"] == r#type && r["scope"] == "total")
            .collect()
    }
}
