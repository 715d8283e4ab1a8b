//! What runs in the VMs: the integration test binaries, built on the host,
//! minus what the table below keeps off a kernel, with the user's filter and
//! libtest arguments.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{guest::Job, initramfs};

/// Tests kept off a kernel unless `--full` is given: (kernel, binary, libtest
/// `--skip` filter, or "" for the whole binary, why). CI has 90 minutes for
/// every kernel; see `cargo xtask test --kernel all --full` for the times.
const SKIP: &[(&str, &str, &str, &str)] = &[
    (
        "5.10",
        "drops",
        "per_reason_totals_agree_with_bpftrace",
        "its bpftrace witness counts by args->reason, which 5.10's kfree_skb has not",
    ),
    ("5.10", "docker", "", DOCKER_5_10),
    ("5.10", "swarm", "", SWARM_5_10),
    // 5.10 has no exact verdict hook (no BPF netfilter programs, no module
    // BTF for fexit): what needs verdict rows stays off it.
    ("5.10", "verdicts", "bridged_flows", NO_VERDICTS),
    ("5.10", "verdicts", "dns_dropped", NO_VERDICTS),
    ("5.10", "verdicts", "each_flow_is_tied", NO_VERDICTS),
    ("5.10", "verdicts", "explain_names_the_rule", NO_VERDICTS),
    ("5.10", "verdicts", "observers_follow", NO_VERDICTS),
    ("5.10", "verdicts", "reject_counts", NO_VERDICTS),
    ("5.10", "verdicts", "vxlan_dropped_at_input", NO_VERDICTS),
];

const DOCKER_5_10: &str = "CI time: a real dockerd on 5.10 under TCG takes one to two minutes a test; --full runs them (the four without verdict rows passed, 464 s)";
const SWARM_5_10: &str = "in the 5.10 VM a container's attach to the Swarm overlay outlasts Docker's 20 s swarm request (28 to 95 s, tracer on either node); profiled there, tracer now takes 7-15 of 400 ticks per 2 s, Docker's own processes the rest; the blocked-VXLAN test would also need the drop reason and verdict rows 5.10 has not";
const NO_VERDICTS: &str = "no exact verdict hook on 5.10: no BPF netfilter programs (6.4), no module BTF for fexit; --nf-kprobes misses packets";

/// What the guest covers with its own tmpfs ([`initramfs::TMPFS`]), and
/// `/var/run`, the host's link to `/run`: nothing it runs may live there.
fn hidden() -> impl Iterator<Item = &'static str> {
    initramfs::TMPFS
        .iter()
        .map(|(dir, _)| *dir)
        .chain(["/var/run"])
}

/// A test binary built on the host.
#[derive(Debug, Clone)]
pub struct Executable {
    /// The test target's name: `cli` for tracer/tests/cli.rs.
    pub label: String,
    /// Its package's directory, where cargo would run it.
    pub dir: PathBuf,
    pub path: PathBuf,
}

/// `cargo xtask test` arguments: cargo's part (before `--`), the test-name
/// filter found among them, and libtest's part (after `--`).
#[derive(Debug, Default, PartialEq)]
pub struct TestArgs {
    pub cargo: Vec<String>,
    pub filter: Option<String>,
    pub libtest: Vec<String>,
}

/// cargo test options that take a value as the next argument.
const VALUE_OPTIONS: &[&str] = &[
    "-p",
    "--package",
    "--exclude",
    "--test",
    "--bench",
    "--example",
    "--bin",
    "-F",
    "--features",
    "--target",
    "--target-dir",
    "--profile",
    "-j",
    "--jobs",
    "--manifest-path",
    "--message-format",
    "--color",
    "--config",
    "-Z",
    "--lockfile-path",
];

pub fn split_args(args: &[String]) -> TestArgs {
    let mut t = TestArgs::default();
    let mut it = args.iter();
    let mut takes_value = false;
    for a in it.by_ref() {
        if a == "--" {
            break;
        }
        t.cargo.push(a.clone());
        if takes_value {
            takes_value = false;
        } else if VALUE_OPTIONS.contains(&a.as_str()) {
            takes_value = true;
        } else if !a.starts_with('-') && t.filter.is_none() {
            t.filter = Some(a.clone());
        }
    }
    t.libtest = it.cloned().collect();
    t
}

/// Builds the workspace's tests the way `cargo test` would and returns the
/// integration test binaries.
pub fn build(cargo_args: &[String]) -> Result<Vec<Executable>> {
    let mut child = Command::new(env!("CARGO"))
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(cargo_args)
        .stdout(Stdio::piped())
        .spawn()
        .context("run cargo test --no-run")?;
    let mut exes = Vec::new();
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true || !is_test {
            continue;
        }
        let (Some(path), Some(name), Some(manifest)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        exes.push(Executable {
            label: name.to_string(),
            dir: Path::new(manifest)
                .parent()
                .context("manifest path without a directory")?
                .to_path_buf(),
            path: PathBuf::from(path),
        });
    }
    if !child.wait()?.success() {
        bail!("building the tests failed");
    }
    for p in exes.iter().flat_map(|e| [&e.path, &e.dir]) {
        if let Some(h) = hidden().find(|h| p.starts_with(h)) {
            bail!(
                "{} is under {h}, which the VM covers with a tmpfs of its own: build elsewhere",
                p.display()
            );
        }
    }
    exes.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(exes)
}

/// The jobs for `kernel`: every binary not kept off it, one test at a time
/// (so the console shows which test runs), with the user's filter and args.
pub fn jobs(kernel: &str, exes: &[Executable], args: &TestArgs, full: bool) -> Vec<Job> {
    let skips: Vec<&(&str, &str, &str, &str)> =
        SKIP.iter().filter(|s| !full && s.0 == kernel).collect();
    exes.iter()
        .filter(|e| !skips.iter().any(|s| s.1 == e.label && s.2.is_empty()))
        .map(|e| {
            let mut argv = vec![e.path.to_string_lossy().into_owned()];
            if !args.libtest.iter().any(|a| a.starts_with("--test-threads")) {
                argv.push("--test-threads=1".into());
            }
            for s in skips.iter().filter(|s| s.1 == e.label && !s.2.is_empty()) {
                argv.extend(["--skip".to_string(), s.2.to_string()]);
            }
            argv.extend(args.filter.iter().cloned());
            argv.extend(args.libtest.iter().cloned());
            Job {
                label: e.label.clone(),
                dir: e.dir.clone(),
                argv,
            }
        })
        .collect()
}

/// What the table keeps off `kernel`, for the report.
pub fn skipped(kernel: &str, full: bool) -> Vec<String> {
    SKIP.iter()
        .filter(|s| !full && s.0 == kernel)
        .map(|s| {
            let what = if s.2.is_empty() {
                s.1.to_string()
            } else {
                format!("{}::{}", s.1, s.2)
            };
            format!("not run here: {what} ({})", s.3)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filter_is_the_first_free_word() {
        let t = split_args(&v(&["--test", "cli", "bad_values", "--", "--nocapture"]));
        assert_eq!(t.filter.as_deref(), Some("bad_values"));
        assert_eq!(t.cargo, v(&["--test", "cli", "bad_values"]));
        assert_eq!(t.libtest, v(&["--nocapture"]));
        assert_eq!(split_args(&v(&["--release"])).filter, None);
    }
}
