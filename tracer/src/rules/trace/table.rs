//! `table inet tracer_<pid>`: the nftables table that marks the packets to trace.

use std::{
    fs::File,
    io::{ErrorKind, Write as _},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::sys::{netns, process};

/// Prefix of the tables tracer creates; rule snapshots never list them.
pub const TABLE_PREFIX: &str = "tracer_";

/// `table inet tracer_<pid>`: sets `nftrace` on the packets matching a filter,
/// at prerouting and output priority -350 (before conntrack and every
/// iptables table). Removed when dropped, panics included; a run killed
/// before that leaves it for [`remove_stale`].
///
/// One per namespace per process: creating a second one in the same
/// namespace replaces the first.
#[derive(Debug)]
pub struct TraceTable {
    name: String,
    /// The namespace it was created in, so that dropping it from any thread
    /// deletes it there.
    netns: File,
}

impl TraceTable {
    /// Creates the table in the calling thread's network namespace; `filter` is
    /// an nft match expression such as `udp dport 4789` or
    /// `ip saddr 10.0.0.1 tcp dport 80` (empty: every packet).
    pub fn create(filter: &str) -> Result<TraceTable> {
        let filter = filter.trim();
        check_filter(filter)?;
        let netns = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let name = format!("{TABLE_PREFIX}{}", std::process::id());
        let ruleset = trace_ruleset(&name, filter);
        let out = nft(&netns, &["-f", "-"], Some(&ruleset))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!("bad --explain filter '{filter}': {}", first_error(&stderr));
        }
        Ok(TraceTable { name, netns })
    }

    /// `tracer_<pid>`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        let _ = nft(&self.netns, &["delete", "table", "inet", &self.name], None);
    }
}

/// The ruleset `nft -f -` gets: (re)creates the table atomically.
pub(super) fn trace_ruleset(name: &str, filter: &str) -> String {
    let rule = if filter.is_empty() {
        "meta nftrace set 1".to_string()
    } else {
        format!("{filter} meta nftrace set 1")
    };
    format!(
        "table inet {name}\n\
         delete table inet {name}\n\
         table inet {name} {{\n\
         \tchain pre {{\n\
         \t\ttype filter hook prerouting priority -350; policy accept;\n\
         \t\t{rule}\n\
         \t}}\n\
         \tchain out {{\n\
         \t\ttype filter hook output priority -350; policy accept;\n\
         \t\t{rule}\n\
         \t}}\n\
         }}\n"
    )
}

/// A filter must stay one expression inside the rule: no statement
/// separators, comments or braces that close the chain.
pub(super) fn check_filter(filter: &str) -> Result<()> {
    if let Some(c) = filter
        .chars()
        .find(|c| matches!(c, '\n' | '\r' | ';' | '#'))
    {
        bail!("bad --explain filter '{filter}': {c:?} is not allowed in a match expression");
    }
    let mut depth = 0i32;
    for c in filter.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 {
        bail!("bad --explain filter '{filter}': unbalanced braces");
    }
    Ok(())
}

/// nft's complaint without its location (`/dev/stdin:6:7-12: Error: `), which
/// points into the generated ruleset rather than at what the user typed.
pub(super) fn first_error(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("Error:"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("nft failed");
    match line.split_once("Error: ") {
        Some((_, msg)) => msg.trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// Runs nft inside `netns`.
pub(super) fn nft(netns: &File, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    netns::command_in(&mut cmd, netns);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            anyhow!("nft not found: install nftables to use --explain")
        } else {
            anyhow!("run nft: {e}")
        }
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("nft stdin")?;
        pipe.write_all(input.as_bytes()).context("write to nft")?;
    }
    child.wait_with_output().context("wait for nft")
}

/// Deletes the `inet tracer_<pid>` tables of the calling thread's namespace
/// whose process is gone (left by a killed run); returns their names. Tables
/// of live processes and every other table are left alone.
pub fn remove_stale() -> Result<Vec<String>> {
    let netns = File::open("/proc/thread-self/ns/net").context("open own netns")?;
    let out = nft(&netns, &["list", "tables"], None)?;
    if !out.status.success() {
        bail!(
            "nft list tables: {}",
            first_error(&String::from_utf8_lossy(&out.stderr))
        );
    }
    let mut removed = Vec::new();
    for name in stale_tables(&String::from_utf8_lossy(&out.stdout), process::alive) {
        let out = nft(&netns, &["delete", "table", "inet", &name], None)?;
        // Someone else may have removed it meanwhile: only a table that is gone counts.
        if out.status.success() {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Names of `table inet tracer_<pid>` lines of `nft list tables` whose pid is dead.
pub(super) fn stale_tables(list: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    list.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some("table"), Some("inet"), Some(name), None) => Some(name),
                _ => None,
            }
        })
        .filter(|name| {
            name.strip_prefix(TABLE_PREFIX)
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && !alive(pid))
        })
        .map(str::to_string)
        .collect()
}
