//! Passive rule counters: every iptables, ip6tables and nftables rule of a
//! namespace with its packet and byte counters, read from the tools' text output.
//!
//! Sources, in this order:
//! - `iptables-save -c` and `ip6tables-save -c`: whichever backend the
//!   machine's `iptables-save` is. When it says the other backend holds tables
//!   too ("iptables-legacy tables present"), or when it is the legacy one, the
//!   other backend's `*-save` is read as well.
//! - `nft -a list ruleset`, without the tables iptables-nft manages (they were
//!   read through iptables-save, in the syntax their users wrote) and without
//!   tracer's own `tracer_*` tables. The listing of the iptables-nft tables is
//!   still used: it gives their rules' nftables handles, which trace events
//!   carry (see [`lookup`]).

use std::{
    collections::HashMap,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Result, bail};

use super::{
    iptables::parse_iptables_save,
    nft::{NftRules, parse_nft_ruleset},
    rule::{Family, Rule, Source},
};

/// A tool that could not be read, so its rules are missing from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// `nft`, `iptables-save`, ...
    pub tool: &'static str,
    /// `not installed`, or its error.
    pub reason: String,
}

/// What [`snapshot_report`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rules: Vec<Rule>,
    /// Tools that were missing or failed: the same every time on a given
    /// machine, so worth telling the user once.
    pub unavailable: Vec<Unavailable>,
}

/// Every rule of the calling thread's network namespace with its counters.
///
/// A missing or failing tool is not an error: its rules are left out (see
/// [`snapshot_report`] to learn which). It fails only when no tool could be
/// read and at least one was there but failed (e.g. not root).
pub fn snapshot() -> Result<Vec<Rule>> {
    snapshot_report().map(|s| s.rules)
}

/// [`snapshot`], also saying which tools were unavailable.
pub fn snapshot_report() -> Result<Snapshot> {
    collect(&mut run_tool, iptables_save_is_legacy())
}

/// [`snapshot_report`] with the tools run by `run`; `legacy_primary`: the
/// machine's `iptables-save` is the legacy backend.
pub(super) fn collect(
    run: &mut dyn FnMut(&str, &[&str]) -> Tool,
    legacy_primary: bool,
) -> Result<Snapshot> {
    let mut unavailable = Vec::new();
    let mut failures = Vec::new();
    let mut read_any = false;
    let mut missing = |tool: &'static str, result: Tool| -> Option<(String, String)> {
        match result {
            Tool::Ran { stdout, stderr } => {
                read_any = true;
                return Some((stdout, stderr));
            }
            Tool::Missing => unavailable.push(Unavailable {
                tool,
                reason: "not installed".into(),
            }),
            Tool::Failed(reason) => {
                failures.push(format!("{tool}: {reason}"));
                unavailable.push(Unavailable { tool, reason });
            }
        }
        None
    };

    let mut ipt: Vec<Rule> = Vec::new();
    for (family, primary, nft_backend, legacy_backend) in [
        (
            Family::Ipv4,
            "iptables-save",
            "iptables-nft-save",
            "iptables-legacy-save",
        ),
        (
            Family::Ipv6,
            "ip6tables-save",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
        ),
    ] {
        let Some((stdout, stderr)) = missing(primary, run(primary, &["-c"])) else {
            continue;
        };
        ipt.extend(parse_iptables_save(&stdout, family));
        // The nft backend says when the legacy one holds tables too; the
        // legacy backend never says, so with it the nft one is always read
        // (when installed: a missing one just holds nothing).
        let other = if legacy_primary {
            match run(nft_backend, &["-c"]) {
                Tool::Missing => None,
                result => missing(nft_backend, result),
            }
        } else if stderr.contains("legacy tables present") {
            missing(legacy_backend, run(legacy_backend, &["-c"]))
        } else {
            None
        };
        if let Some((stdout, _)) = other {
            ipt.extend(parse_iptables_save(&stdout, family));
        }
    }

    let nft = missing("nft", run("nft", &["-a", "list", "ruleset"]))
        .map(|(stdout, stderr)| parse_nft_ruleset(&stdout, &stderr))
        .unwrap_or_default();
    if !read_any && let Some(first) = failures.into_iter().next() {
        bail!("cannot read any firewall rules: {first}");
    }
    let mut rules = merge(ipt, nft);
    super::rule::reach(&mut rules);
    Ok(Snapshot { rules, unavailable })
}

// ---- Running the tools ---------------------------------------------------

pub(super) enum Tool {
    Ran {
        stdout: String,
        stderr: String,
    },
    Missing,
    /// Exit status and the first line of stderr.
    Failed(String),
}

pub(super) fn run_tool(program: &str, args: &[&str]) -> Tool {
    let out = match Command::new(program).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => return Tool::Missing,
        Err(e) => return Tool::Failed(e.to_string()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Tool::Failed(format!("{}: {}", out.status, first.trim()));
    }
    Tool::Ran { stdout, stderr }
}

/// Whether `iptables-save` on PATH is the legacy backend (Debian's
/// alternatives point it at xtables-legacy-multi or xtables-nft-multi).
pub(super) fn iptables_save_is_legacy() -> bool {
    static LEGACY: OnceLock<bool> = OnceLock::new();
    *LEGACY.get_or_init(|| {
        find_in_path("iptables-save")
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().contains("legacy"))
            })
            .unwrap_or(false)
    })
}

pub(super) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| Path::new(p).is_file())
}

/// Puts the iptables rules and the nft rules together: iptables-nft rules get
/// the handles (and counter presence, hook and priority) of the nft listing of
/// their table, and those tables are left out of the nft rules.
pub(super) fn merge(mut ipt: Vec<Rule>, nft: NftRules) -> Vec<Rule> {
    let NftRules {
        mut native,
        mut managed,
    } = nft;
    // Tables iptables-nft showed are its own even when nft did not warn
    // (it warns only for tables using xtables matches or targets).
    let ipt_tables: Vec<(Family, String)> = ipt
        .iter()
        .filter(|r| r.source == Source::Iptables)
        .map(|r| (r.family, r.table.clone()))
        .collect();
    let (moved, kept): (Vec<Rule>, Vec<Rule>) = native
        .drain(..)
        .partition(|r| ipt_tables.contains(&(r.family, r.table.clone())));
    native = kept;
    managed.extend(moved);

    // Rules of one chain in both listings, in order.
    let mut by_chain: HashMap<(Family, String, String), Vec<&Rule>> = HashMap::new();
    for r in &managed {
        by_chain
            .entry((r.family, r.table.clone(), r.chain.clone()))
            .or_default()
            .push(r);
    }
    let mut ipt_count: HashMap<(Family, String, String), usize> = HashMap::new();
    for r in ipt.iter().filter(|r| r.source == Source::Iptables) {
        *ipt_count
            .entry((r.family, r.table.clone(), r.chain.clone()))
            .or_default() += 1;
    }
    let mut nth: HashMap<(Family, String, String), usize> = HashMap::new();
    for r in ipt.iter_mut().filter(|r| r.source == Source::Iptables) {
        let key = (r.family, r.table.clone(), r.chain.clone());
        let i = nth.entry(key.clone()).or_default();
        let n = *i;
        *i += 1;
        let Some(nft_chain) = by_chain.get(&key) else {
            continue;
        };
        // Only when both show the same number of rules is position a match.
        if nft_chain.len() != ipt_count[&key] {
            continue;
        }
        let m = nft_chain[n];
        r.handle = m.handle;
        r.counted = m.counted;
        if m.hook.is_some() {
            r.hook = m.hook;
            r.priority = m.priority;
        }
    }
    ipt.extend(native);
    ipt
}
