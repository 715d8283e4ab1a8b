//! Running the tracer binary the way a script would: JSON output, a ready
//! file, SIGTERM to stop, totals at exit.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// A tracer process, killed if still running when dropped.
pub struct TracerRun {
    child: Child,
    /// `None` when standard output went elsewhere (`start_with_stdout`).
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    /// What tracer printed on standard output and error so far.
    stdout_so_far: Shared,
    stderr_so_far: Shared,
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

/// Reads `r` into `so_far` as it comes; returns all of it once `r` ends.
fn reader(mut r: impl std::io::Read + Send + 'static, so_far: Shared) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => so_far
                    .lock()
                    .expect("not poisoned")
                    .extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let all = std::mem::take(&mut *so_far.lock().expect("not poisoned"));
        String::from_utf8_lossy(&all).into_owned()
    })
}

/// What a reader thread has read so far.
type Shared = Arc<Mutex<Vec<u8>>>;

fn so_far(s: &Shared) -> String {
    String::from_utf8_lossy(&s.lock().expect("not poisoned")).into_owned()
}

impl TracerRun {
    /// Starts `bin args... --output json --ready-file F` and waits until it
    /// has attached everything.
    pub fn start(bin: &Path, args: &[String]) -> Result<Self> {
        Self::start_with_stdout(bin, args, None)
    }

    /// [`TracerRun::start`], with standard output sent to `stdout` if given
    /// (a pipe into a reader of `--pcap-drops -`); rows are then not collected.
    pub fn start_with_stdout(bin: &Path, args: &[String], stdout: Option<Stdio>) -> Result<Self> {
        Self::start_in(&[], bin, args, stdout)
    }

    /// [`TracerRun::start_with_stdout`], run by the command `prefix` (which
    /// ends by running its arguments, as `nsenter ... --` does): tracer on
    /// a Docker host of [`crate::docker`].
    pub fn start_in(
        prefix: &[String],
        bin: &Path,
        args: &[String],
        stdout: Option<Stdio>,
    ) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let ready = std::env::temp_dir().join(format!(
            "tracer-ready-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready);
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(args)
            .args(["--output", "json", "--ready-file"])
            .arg(&ready)
            .stdout(stdout.unwrap_or_else(Stdio::piped))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let (stdout_so_far, stderr_so_far) = (Shared::default(), Shared::default());
        let stdout = child
            .stdout
            .take()
            .map(|o| reader(o, stdout_so_far.clone()));
        let stderr = reader(child.stderr.take().expect("piped"), stderr_so_far.clone());
        let mut run = TracerRun {
            child,
            stdout,
            stderr: Some(stderr),
            stdout_so_far,
            stderr_so_far,
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

    /// The rows tracer has printed so far (none when standard output went
    /// elsewhere); a line still on its way is left out.
    pub fn rows_so_far(&self) -> Vec<Value> {
        so_far(&self.stdout_so_far)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What tracer has printed on standard error so far.
    pub fn stderr_so_far(&self) -> String {
        so_far(&self.stderr_so_far)
    }

    /// The URL `--metrics` serves, from tracer's start-up line. Printed
    /// before the ready file is made, it may still be on its way through the
    /// pipe: waits for it while tracer runs.
    pub fn metrics_url(&mut self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stderr = self.stderr_so_far();
            if let Some(url) = stderr
                .lines()
                .find_map(|l| l.strip_prefix("tracer: metrics at "))
            {
                return Some(url.trim().to_string());
            }
            if Instant::now() > deadline || !matches!(self.child.try_wait(), Ok(None)) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
        let stdout = match self.stdout.take() {
            Some(r) => r.join().unwrap_or_default(),
            None => String::new(),
        };
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
