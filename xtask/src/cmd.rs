//! Running external commands with errors that say what failed.

use std::process::{Command, Output};

use anyhow::{Context as _, Result, bail};

/// Runs `program args...`; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip args...`
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

/// `ip netns exec ns program args...`
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// True if `program` is on PATH.
pub fn exists(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
