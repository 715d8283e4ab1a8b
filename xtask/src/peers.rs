//! Other tools run side by side with tracer, as independent witnesses.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::in_ns;

/// A running `bpftrace` script.
pub struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    /// Starts `script` and waits until its probes are attached.
    pub fn start(script: &str) -> Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start bpftrace")?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut line = String::new();
        while !line.starts_with("Attaching") {
            line.clear();
            if out.read_line(&mut line)? == 0 || Instant::now() > deadline {
                let _ = child.kill();
                bail!("bpftrace did not attach");
            }
        }
        child.stdout = Some(out.into_inner());
        Ok(Bpftrace { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGINT, which makes bpftrace print its maps) and returns its output.
    ///
    /// bpftrace can miss a SIGINT: with no output events to poll it sleeps in
    /// epoll without a timeout, and a signal that lands just before that sleep
    /// only sets a flag it has already checked. So the signal is sent again
    /// until it exits.
    pub fn stop(mut self) -> Result<String> {
        let mut stdout = self.child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: plain syscall.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let resend = Instant::now() + Duration::from_millis(500);
            while Instant::now() < resend {
                if self.child.try_wait()?.is_some() {
                    return reader
                        .join()
                        .map_err(|_| anyhow::anyhow!("bpftrace reader panicked"))?
                        .context("read bpftrace output");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not stop on SIGINT within 30 s");
            }
        }
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses bpftrace map lines `@[KEY]: VALUE` into KEY -> VALUE.
pub fn bpftrace_counts(output: &str) -> HashMap<String, u64> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("@[")?;
            let (key, value) = rest.split_once("]: ")?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The kernel's own number for drop reason `name`, from the kfree_skb
/// tracepoint's format (independent of tracer's BTF reading).
pub fn kernel_reason_value(name: &str) -> Result<u32> {
    let fmt = std::fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format")?;
    let needle = format!("\"{name}\" }}");
    let at = fmt
        .find(&needle)
        .with_context(|| format!("{name} not in kfree_skb format"))?;
    let open = fmt[..at].rfind('{').context("malformed format")?;
    Ok(fmt[open + 1..at]
        .trim()
        .trim_end_matches(',')
        .trim()
        .parse()?)
}

/// Packets counted by the iptables rules of `chain` in namespace `ns` whose
/// text contains `needle` (e.g. "dpt:4789").
pub fn iptables_packets(ns: &str, chain: &str, needle: &str) -> Result<u64> {
    let out = in_ns(ns, "iptables", &["-L", chain, "-v", "-x", "-n"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// A kernel SNMP counter (`nstat`) of namespace `ns`, e.g. UdpNoPorts.
pub fn nstat(ns: &str, name: &str) -> Result<u64> {
    let out = in_ns(ns, "nstat", &["-az", name])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == name).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or(0))
}
