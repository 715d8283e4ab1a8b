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

/// The netfilter family of a table, as nftables names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
    Inet,
    Bridge,
    Arp,
    Netdev,
}

impl Family {
    /// nft's name: `ip`, `ip6`, `inet`, `bridge`, `arp`, `netdev`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
            Family::Inet => "inet",
            Family::Bridge => "bridge",
            Family::Arp => "arp",
            Family::Netdev => "netdev",
        }
    }

    pub fn from_nft(name: &str) -> Option<Family> {
        Some(match name {
            "ip" => Family::Ipv4,
            "ip6" => Family::Ipv6,
            "inet" => Family::Inet,
            "bridge" => Family::Bridge,
            "arp" => Family::Arp,
            "netdev" => Family::Netdev,
            _ => return None,
        })
    }

    /// From an `NFPROTO_*` number (the family of a table in netlink messages).
    pub fn from_nfproto(p: u8) -> Option<Family> {
        Some(match p {
            1 => Family::Inet,
            2 => Family::Ipv4,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ipv6,
            _ => return None,
        })
    }
}

/// The netfilter hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    /// netdev family only.
    Ingress,
    /// netdev family only.
    Egress,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    /// From nft's lower-case name or iptables' built-in chain name.
    pub fn from_name(name: &str) -> Option<Hook> {
        Some(match name.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            "ingress" => Hook::Ingress,
            "egress" => Hook::Egress,
            _ => return None,
        })
    }
}

/// What a rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Drop,
    /// Drops and answers with an ICMP error or TCP reset.
    Reject,
    Accept,
    /// Anything else: jump, goto, return, continue, queue, NAT, marks, logs, verdict maps...
    Other,
}

/// Which tool the rule was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// `iptables`/`ip6tables` with the nf_tables backend (Debian's default).
    /// Its rules are nftables rules: trace events show them, with a handle.
    Iptables,
    /// `iptables-legacy`/`ip6tables-legacy`. nftables tracing never sees these.
    IptablesLegacy,
    /// A native nftables rule.
    Nft,
}

/// One rule and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub source: Source,
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// The hook of the chain if it is a base chain; `None` for chains that are
    /// only jumped to (iptables user chains, nft regular chains).
    pub hook: Option<Hook>,
    /// The priority of the base chain (named priorities resolved to numbers).
    pub priority: Option<i32>,
    pub verdict: Verdict,
    pub packets: u64,
    pub bytes: u64,
    /// The rule has a counter. Always for iptables; for nft only rules with a
    /// `counter` statement: the counters of others stay 0.
    pub counted: bool,
    /// The rule as its user wrote it: `-A INPUT -p udp -m udp --dport 4789 -j DROP`
    /// as iptables-save prints it, or nft's rule text without the `# handle` comment.
    pub text: String,
    /// The nftables rule handle (nft rules and iptables-nft rules), as trace events carry it.
    pub handle: Option<u64>,
}

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
fn collect(run: &mut dyn FnMut(&str, &[&str]) -> Tool, legacy_primary: bool) -> Result<Snapshot> {
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
    Ok(Snapshot {
        rules: merge(ipt, nft),
        unavailable,
    })
}

/// Finds the rule a trace event names: nft rules and iptables-nft rules by
/// their nftables handle (iptables-legacy rules never appear in traces).
pub fn lookup<'a>(
    rules: &'a [Rule],
    family: Family,
    table: &str,
    chain: &str,
    handle: u64,
) -> Option<&'a Rule> {
    rules.iter().find(|r| {
        r.source != Source::IptablesLegacy
            && r.family == family
            && r.table == table
            && r.chain == chain
            && r.handle == Some(handle)
    })
}

/// DROP and REJECT rules whose packet counter moved from `before` to `after`,
/// with how many packets they counted in between.
///
/// Rules are matched by source, family, table and chain, then by nftables
/// handle for nft rules and by text for iptables rules (the n-th rule with
/// that text in the chain, so inserting rules above does not confuse it, and
/// a rule reloaded by iptables-restore with a new handle is still the same).
/// A rule that is new in `after`, or whose counter went down (it was
/// recreated or zeroed), counts all of its packets in `after`.
pub fn moved(before: &[Rule], after: &[Rule]) -> Vec<(Rule, u64)> {
    let old: HashMap<Identity, u64> = identities(before)
        .into_iter()
        .map(|(id, r)| (id, r.packets))
        .collect();
    identities(after)
        .into_iter()
        .filter(|(_, r)| r.counted && matches!(r.verdict, Verdict::Drop | Verdict::Reject))
        .filter_map(|(id, r)| {
            let delta = match old.get(&id) {
                Some(&p) if p <= r.packets => r.packets - p,
                _ => r.packets,
            };
            (delta > 0).then(|| (r.clone(), delta))
        })
        .collect()
}

/// What makes a rule the same rule in two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    source: Source,
    family: Family,
    table: String,
    chain: String,
    handle: Option<u64>,
    text: Option<String>,
    /// The n-th rule with this text in the chain (iptables).
    nth: usize,
}

fn identities(rules: &[Rule]) -> Vec<(Identity, &Rule)> {
    let mut seen: HashMap<(Source, Family, &str, &str, &str), usize> = HashMap::new();
    rules
        .iter()
        .map(|r| {
            let by_text = r.source != Source::Nft || r.handle.is_none();
            let nth = if by_text {
                let n = seen
                    .entry((r.source, r.family, &r.table, &r.chain, &r.text))
                    .or_default();
                *n += 1;
                *n
            } else {
                0
            };
            let id = Identity {
                source: r.source,
                family: r.family,
                table: r.table.clone(),
                chain: r.chain.clone(),
                handle: if by_text { None } else { r.handle },
                text: by_text.then(|| r.text.clone()),
                nth,
            };
            (id, r)
        })
        .collect()
}

// ---- Running the tools ---------------------------------------------------

enum Tool {
    Ran {
        stdout: String,
        stderr: String,
    },
    Missing,
    /// Exit status and the first line of stderr.
    Failed(String),
}

fn run_tool(program: &str, args: &[&str]) -> Tool {
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
fn iptables_save_is_legacy() -> bool {
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

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| Path::new(p).is_file())
}

// ---- iptables-save -------------------------------------------------------

/// Standard priorities of the iptables tables (`NF_IP_PRI_*`), the same for ip6tables.
fn iptables_priority(table: &str, hook: Hook) -> Option<i32> {
    Some(match table {
        "raw" => -300,
        "mangle" => -150,
        "nat" => match hook {
            Hook::Prerouting | Hook::Output => -100,
            _ => 100,
        },
        "filter" => 0,
        "security" => 50,
        _ => return None,
    })
}

/// Parses `iptables-save -c` (or `ip6tables-save -c`) output.
fn parse_iptables_save(text: &str, family: Family) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut source = Source::IptablesLegacy;
    let mut table = String::new();
    // Built-in chains of the current table (declared with a policy, not "-").
    let mut builtin: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("# Generated by ") {
            source = if rest.contains("(nf_tables)") {
                Source::Iptables
            } else {
                Source::IptablesLegacy
            };
        } else if let Some(name) = line.strip_prefix('*') {
            table = name.trim().to_string();
            builtin.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            if let (Some(chain), Some(policy)) = (it.next(), it.next())
                && policy != "-"
            {
                builtin.push(chain.to_string());
            }
        } else if line.starts_with('[') || line.starts_with("-A ") {
            let (packets, bytes, rule) = match line.strip_prefix('[') {
                Some(rest) => {
                    let Some((counts, rule)) = rest.split_once(']') else {
                        continue;
                    };
                    let (p, b) = counts.split_once(':').unwrap_or(("0", "0"));
                    (
                        p.trim().parse().unwrap_or(0),
                        b.trim().parse().unwrap_or(0),
                        rule.trim(),
                    )
                }
                None => (0, 0, line),
            };
            let words = shell_words(rule);
            if words.first().map(String::as_str) != Some("-A") || words.len() < 2 {
                continue;
            }
            let chain = words[1].clone();
            let hook = if builtin.contains(&chain) {
                Hook::from_name(&chain)
            } else {
                None
            };
            rules.push(Rule {
                source,
                family,
                table: table.clone(),
                priority: hook.and_then(|h| iptables_priority(&table, h)),
                chain,
                hook,
                verdict: iptables_verdict(&words),
                packets,
                bytes,
                counted: true,
                text: rule.to_string(),
                handle: None,
            });
        }
    }
    rules
}

/// The verdict of an iptables rule from its last `-j`/`-g`.
fn iptables_verdict(words: &[String]) -> Verdict {
    let mut verdict = Verdict::Other;
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "-j" | "--jump" => {
                verdict = match words.get(i + 1).map(String::as_str) {
                    Some("DROP") => Verdict::Drop,
                    Some("REJECT") => Verdict::Reject,
                    Some("ACCEPT") => Verdict::Accept,
                    _ => Verdict::Other,
                }
            }
            "-g" | "--goto" => verdict = Verdict::Other,
            _ => {}
        }
    }
    verdict
}

/// Splits an iptables-save rule into words, honouring its double quotes
/// (`--comment "a \"b\""`).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

// ---- nft -a list ruleset -------------------------------------------------

/// The rules of `nft -a list ruleset`, split by who manages their table.
#[derive(Debug, Default, PartialEq, Eq)]
struct NftRules {
    /// Native nftables rules, for the snapshot.
    native: Vec<Rule>,
    /// Rules of tables iptables-nft manages (nft names them in a warning),
    /// used only for their handles.
    managed: Vec<Rule>,
}

/// Parses nft's text listing; `stderr` may hold its "managed by iptables-nft" warnings.
fn parse_nft_ruleset(stdout: &str, stderr: &str) -> NftRules {
    let mut managed_tables: Vec<(Family, String)> = Vec::new();
    for line in stdout.lines().chain(stderr.lines()) {
        if let Some(rest) = line.trim().strip_prefix("# Warning: table ")
            && let Some(rest) = rest.strip_suffix(" is managed by iptables-nft, do not touch!")
            && let Some((fam, name)) = rest.split_once(' ')
            && let Some(fam) = Family::from_nft(fam)
        {
            managed_tables.push((fam, name.to_string()));
        }
    }

    let mut out = NftRules::default();
    let mut table: Option<(Family, String)> = None;
    let mut chain: Option<String> = None;
    let mut hook: Option<Hook> = None;
    let mut priority: Option<i32> = None;
    let mut depth: i32 = 0;
    // A rule spread over several lines (braces left open), joined.
    let mut pending = String::new();
    for raw in stdout.lines() {
        let line = if pending.is_empty() {
            raw.trim().to_string()
        } else {
            format!("{pending} {}", raw.trim())
        };
        let (code, comment) = split_comment(&line);
        let delta = brace_delta(code);
        if depth == 2 && chain.is_some() && delta > 0 {
            pending = line;
            continue;
        }
        pending.clear();
        let start = depth;
        depth = (depth + delta).max(0);
        let code = code.trim();
        match start {
            // Between tables: `table ip filter {`
            0 => {
                table = code
                    .strip_prefix("table ")
                    .filter(|_| delta > 0)
                    .and_then(|rest| {
                        let mut it = rest.split_whitespace();
                        let family = Family::from_nft(it.next()?)?;
                        Some((family, unquote(it.next()?).to_string()))
                    });
            }
            // In a table: `chain INPUT {`, or sets, maps, flowtables, objects.
            1 => {
                chain = code
                    .strip_prefix("chain ")
                    .filter(|_| delta > 0)
                    .map(|rest| unquote(rest.trim().trim_end_matches('{').trim()).to_string());
                hook = None;
                priority = None;
            }
            // In a chain: its properties and rules.
            2 if depth == 2 => {
                let (Some((family, tname)), Some(cname)) = (&table, &chain) else {
                    continue;
                };
                if code.starts_with("type ") {
                    (hook, priority) = parse_chain_type(code, *family);
                    continue;
                }
                // Chain properties (comment, policy, devices) carry no handle.
                let Some(handle) = comment
                    .and_then(|c| c.trim().strip_prefix("handle "))
                    .and_then(|h| h.trim().parse::<u64>().ok())
                else {
                    continue;
                };
                if tname.starts_with(super::trace::TABLE_PREFIX) {
                    continue;
                }
                let words = nft_words(code);
                let (counted, packets, bytes) = nft_counter(&words);
                let rule = Rule {
                    source: Source::Nft,
                    family: *family,
                    table: tname.clone(),
                    chain: cname.clone(),
                    hook,
                    priority,
                    verdict: nft_verdict(&words),
                    packets,
                    bytes,
                    counted,
                    text: strip_counter_values(code),
                    handle: Some(handle),
                };
                if managed_tables.contains(&(*family, tname.clone())) {
                    out.managed.push(rule);
                } else {
                    out.native.push(rule);
                }
            }
            _ => {}
        }
    }
    out
}

/// Puts the iptables rules and the nft rules together: iptables-nft rules get
/// the handles (and counter presence, hook and priority) of the nft listing of
/// their table, and those tables are left out of the nft rules.
fn merge(mut ipt: Vec<Rule>, nft: NftRules) -> Vec<Rule> {
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

/// Splits off a `#` comment outside quotes.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return (&line[..i], Some(&line[i + 1..])),
            _ => {}
        }
    }
    (line, None)
}

/// `{` minus `}` outside quotes.
fn brace_delta(code: &str) -> i32 {
    let mut quoted = false;
    let mut d = 0;
    for c in code.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => d += 1,
            '}' if !quoted => d -= 1,
            _ => {}
        }
    }
    d
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// Words of a rule outside braces (anonymous sets, verdict maps) and quotes
/// (a quoted string is one word, without its quotes).
fn nft_words(code: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut depth = 0;
    let mut in_word = false;
    for c in code.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            _ if quoted => cur.push(c),
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The rule as its user wrote it: `counter packets 5 bytes 145 drop` becomes
/// `counter drop` (the values are in [`Rule::packets`] and [`Rule::bytes`]).
fn strip_counter_values(code: &str) -> String {
    const PAT: &str = "counter packets ";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    let mut quoted = false;
    while !rest.is_empty() {
        if !quoted && let Some(after) = rest.strip_prefix(PAT) {
            let mut it = after.splitn(4, ' ');
            if let (Some(p), Some("bytes"), Some(b)) = (it.next(), it.next(), it.next())
                && p.parse::<u64>().is_ok()
                && b.parse::<u64>().is_ok()
            {
                out.push_str("counter");
                rest = &after[p.len() + " bytes ".len() + b.len()..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        if c == '"' {
            quoted = !quoted;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `counter packets N bytes M`: (has an inline counter, N, M). A named
/// counter (`counter name "x"`) is not read.
fn nft_counter(words: &[String]) -> (bool, u64, u64) {
    for (i, w) in words.iter().enumerate() {
        if w == "counter"
            && words.get(i + 1).map(String::as_str) == Some("packets")
            && words.get(i + 3).map(String::as_str) == Some("bytes")
        {
            let p = words.get(i + 2).and_then(|s| s.parse().ok());
            let b = words.get(i + 4).and_then(|s| s.parse().ok());
            if let (Some(p), Some(b)) = (p, b) {
                return (true, p, b);
            }
        }
    }
    (false, 0, 0)
}

/// The verdict of an nft rule: `reject` anywhere outside braces (it ends the
/// rule; what follows is its arguments), else the last statement word before
/// an optional `comment "..."`. Verdicts inside verdict maps are `Other`.
fn nft_verdict(words: &[String]) -> Verdict {
    let mut end = words.len();
    if end >= 2 && words[end - 2] == "comment" {
        end -= 2;
    }
    let words = &words[..end];
    if words.iter().any(|w| w == "reject") {
        return Verdict::Reject;
    }
    match words.last().map(String::as_str) {
        Some("drop") => Verdict::Drop,
        Some("accept") => Verdict::Accept,
        _ => Verdict::Other,
    }
}

/// `type filter hook input priority filter - 5; policy accept;` -> (hook, priority).
fn parse_chain_type(code: &str, family: Family) -> (Option<Hook>, Option<i32>) {
    let decl = code.split(';').next().unwrap_or("");
    let words: Vec<&str> = decl.split_whitespace().collect();
    let hook = words
        .iter()
        .position(|w| *w == "hook")
        .and_then(|i| words.get(i + 1))
        .and_then(|h| Hook::from_name(h));
    let priority = words
        .iter()
        .position(|w| *w == "priority")
        .and_then(|i| parse_priority(&words[i + 1..].concat(), family));
    (hook, priority)
}

/// A priority as nft prints it: `-350`, `filter`, `filter - 5` (spaces removed:
/// `filter-5`), `srcnat+5`. Named priorities are family dependent.
fn parse_priority(p: &str, family: Family) -> Option<i32> {
    if let Ok(n) = p.parse() {
        return Some(n);
    }
    let split = p.find(['+', '-']).unwrap_or(p.len());
    let (name, offset) = p.split_at(split);
    let base = match (family, name) {
        (Family::Bridge, "dstnat") => -300,
        (Family::Bridge, "filter") => -200,
        (Family::Bridge, "out") => 100,
        (Family::Bridge, "srcnat") => 300,
        (Family::Bridge, _) => return None,
        (_, "raw") => -300,
        (_, "mangle") => -150,
        (_, "dstnat") => -100,
        (_, "filter") => 0,
        (_, "security") => 50,
        (_, "srcnat") => 100,
        _ => return None,
    };
    let offset: i32 = match offset.strip_prefix('+') {
        Some(o) => o.parse().ok()?,
        None if offset.is_empty() => 0,
        None => offset.parse().ok()?,
    };
    Some(base + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured by fixtures/capture.sh: iptables (nf_tables and legacy
    // backends), ip6tables and native nftables rules in one namespace after
    // known traffic.
    const IPTABLES_SAVE: &str = include_str!("fixtures/iptables-save.txt");
    const IPTABLES_SAVE_STDERR: &str = include_str!("fixtures/iptables-save.stderr");
    const IP6TABLES_SAVE: &str = include_str!("fixtures/ip6tables-save.txt");
    const IPTABLES_LEGACY_SAVE: &str = include_str!("fixtures/iptables-legacy-save.txt");
    const NFT_RULESET: &str = include_str!("fixtures/nft-ruleset.txt");
    const NFT_RULESET_STDERR: &str = include_str!("fixtures/nft-ruleset.stderr");

    fn find<'a>(rules: &'a [Rule], table: &str, chain: &str, text: &str) -> &'a Rule {
        rules
            .iter()
            .find(|r| r.table == table && r.chain == chain && r.text.contains(text))
            .unwrap_or_else(|| panic!("no rule {table}/{chain} '{text}' in {rules:#?}"))
    }

    /// Everything the fixtures hold, merged as `snapshot` merges it.
    fn all() -> Vec<Rule> {
        let mut ipt = parse_iptables_save(IPTABLES_SAVE, Family::Ipv4);
        ipt.extend(parse_iptables_save(IPTABLES_LEGACY_SAVE, Family::Ipv4));
        ipt.extend(parse_iptables_save(IP6TABLES_SAVE, Family::Ipv6));
        merge(ipt, parse_nft_ruleset(NFT_RULESET, NFT_RULESET_STDERR))
    }

    /// A fake tool runner: the fixtures for the tools in `have`, "not
    /// installed" for the others; records what was run.
    fn fake(have: &[&str], calls: &mut Vec<String>) -> impl FnMut(&str, &[&str]) -> Tool {
        let have: Vec<String> = have.iter().map(|s| s.to_string()).collect();
        move |program: &str, args: &[&str]| {
            calls.push(format!("{program} {}", args.join(" ")));
            if !have.iter().any(|h| h == program) {
                return Tool::Missing;
            }
            let (out, err) = match program {
                "iptables-save" | "iptables-nft-save" => (IPTABLES_SAVE, IPTABLES_SAVE_STDERR),
                "iptables-legacy-save" => (IPTABLES_LEGACY_SAVE, ""),
                "ip6tables-save" => (IP6TABLES_SAVE, ""),
                "nft" => (NFT_RULESET, NFT_RULESET_STDERR),
                _ => ("", ""),
            };
            Tool::Ran {
                stdout: out.into(),
                stderr: err.into(),
            }
        }
    }

    #[test]
    fn snapshot_reads_the_legacy_backend_when_told_to() {
        let mut calls = Vec::new();
        let all_tools = [
            "iptables-save",
            "iptables-legacy-save",
            "ip6tables-save",
            "nft",
        ];
        let snap = collect(&mut fake(&all_tools, &mut calls), false).unwrap();
        assert_eq!(
            calls,
            [
                "iptables-save -c",
                "iptables-legacy-save -c",
                "ip6tables-save -c",
                "nft -a list ruleset"
            ]
        );
        assert_eq!(snap.rules, all());
        assert!(snap.unavailable.is_empty());
    }

    #[test]
    fn snapshot_reads_the_nft_backend_when_iptables_save_is_legacy() {
        let mut calls = Vec::new();
        let tools = [
            "iptables-save",
            "iptables-nft-save",
            "ip6tables-save",
            "nft",
        ];
        let snap = collect(&mut fake(&tools, &mut calls), true).unwrap();
        assert_eq!(
            calls,
            [
                "iptables-save -c",
                "iptables-nft-save -c",
                "ip6tables-save -c",
                "ip6tables-nft-save -c",
                "nft -a list ruleset"
            ]
        );
        // ip6tables-nft-save is not installed: no rules there, and nothing to tell.
        assert!(snap.unavailable.is_empty());
    }

    #[test]
    fn snapshot_without_some_tools() {
        let mut calls = Vec::new();
        let snap = collect(
            &mut fake(&["iptables-save", "iptables-legacy-save"], &mut calls),
            false,
        )
        .unwrap();
        // iptables rules only, without handles (they come from nft's listing).
        assert_eq!(snap.rules.len(), 10);
        assert!(
            snap.rules
                .iter()
                .all(|r| r.source != Source::Nft && r.handle.is_none())
        );
        let missing: Vec<(&str, &str)> = snap
            .unavailable
            .iter()
            .map(|u| (u.tool, u.reason.as_str()))
            .collect();
        assert_eq!(
            missing,
            [
                ("ip6tables-save", "not installed"),
                ("nft", "not installed")
            ]
        );

        let mut calls = Vec::new();
        let snap = collect(&mut fake(&["nft"], &mut calls), false).unwrap();
        // nft alone: the iptables-nft tables are still recognised by nft's warnings.
        assert_eq!(snap.rules.len(), 15);
        assert_eq!(snap.unavailable.len(), 2);

        let mut calls = Vec::new();
        let snap = collect(&mut fake(&[], &mut calls), false).unwrap();
        assert!(snap.rules.is_empty());
        assert_eq!(snap.unavailable.len(), 3);
    }

    #[test]
    fn snapshot_fails_when_no_tool_could_be_read() {
        let mut denied = |program: &str, _: &[&str]| match program {
            "nft" => Tool::Missing,
            _ => Tool::Failed("exit status: 4: Permission denied (you must be root)".into()),
        };
        let e = collect(&mut denied, false).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot read any firewall rules: iptables-save: exit status: 4: Permission denied (you must be root)"
        );
    }

    #[test]
    fn iptables_save_tables_chains_counters_verdicts() {
        assert!(IPTABLES_SAVE_STDERR.contains("legacy tables present"));
        let rules = parse_iptables_save(IPTABLES_SAVE, Family::Ipv4);
        assert_eq!(rules.len(), 9, "{rules:#?}");
        assert!(rules.iter().all(|r| r.source == Source::Iptables
            && r.family == Family::Ipv4
            && r.counted
            && r.handle.is_none()));

        let drop = find(&rules, "filter", "INPUT", "--dport 5353");
        assert_eq!(drop.text, "-A INPUT -p udp -m udp --dport 5353 -j DROP");
        assert_eq!(
            (
                drop.hook,
                drop.priority,
                drop.verdict,
                drop.packets,
                drop.bytes
            ),
            (Some(Hook::Input), Some(0), Verdict::Drop, 5, 145)
        );
        let jump = find(&rules, "filter", "INPUT", "-j OVERLAY");
        assert_eq!(
            (jump.verdict, jump.packets, jump.bytes),
            (Verdict::Other, 13, 542)
        );
        let goto = find(&rules, "filter", "FORWARD", "-g OVERLAY");
        assert_eq!(
            (goto.hook, goto.verdict),
            (Some(Hook::Forward), Verdict::Other)
        );

        // A user chain: no hook.
        let reset = find(&rules, "filter", "OVERLAY", "tcp-reset");
        assert_eq!(
            reset.text,
            "-A OVERLAY -s 10.99.0.0/24 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset"
        );
        assert_eq!(
            (reset.hook, reset.priority, reset.verdict, reset.packets),
            (None, None, Verdict::Reject, 0)
        );
        let icmp = find(&rules, "filter", "OVERLAY", "icmp-host-prohibited");
        assert_eq!(
            (icmp.verdict, icmp.packets, icmp.bytes),
            (Verdict::Reject, 3, 252)
        );
        // A quoted comment is part of the text, and does not hide the target.
        let vxlan = find(&rules, "filter", "OVERLAY", "--comment");
        assert_eq!(
            vxlan.text,
            "-A OVERLAY -p udp -m udp --dport 4789 -m comment --comment \"vxlan in\" -j ACCEPT"
        );
        assert_eq!((vxlan.verdict, vxlan.packets), (Verdict::Accept, 5));

        // Other tables: hooks from built-in chain names, standard priorities.
        let mark = find(&rules, "mangle", "PREROUTING", "MARK");
        assert_eq!(
            (mark.hook, mark.priority, mark.verdict, mark.packets),
            (Some(Hook::Prerouting), Some(-150), Verdict::Other, 5)
        );
        let notrack = find(&rules, "raw", "PREROUTING", "NOTRACK");
        assert_eq!((notrack.priority, notrack.packets), (Some(-300), 5));
        let masq = find(&rules, "nat", "POSTROUTING", "MASQUERADE");
        assert_eq!(
            (masq.hook, masq.priority),
            (Some(Hook::Postrouting), Some(100))
        );
    }

    #[test]
    fn ip6tables_save() {
        let rules = parse_iptables_save(IP6TABLES_SAVE, Family::Ipv6);
        assert_eq!(rules.len(), 2);
        let drop = find(&rules, "filter", "INPUT", "--dport 5353");
        assert_eq!(
            (
                drop.family,
                drop.source,
                drop.verdict,
                drop.packets,
                drop.bytes
            ),
            (Family::Ipv6, Source::Iptables, Verdict::Drop, 2, 98)
        );
        let reject = find(&rules, "filter", "INPUT", "icmp6-adm-prohibited");
        assert_eq!(
            reject.text,
            "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j REJECT --reject-with icmp6-adm-prohibited"
        );
        assert_eq!(
            (reject.verdict, reject.packets, reject.bytes),
            (Verdict::Reject, 2, 208)
        );
    }

    #[test]
    fn iptables_legacy_save() {
        let rules = parse_iptables_save(IPTABLES_LEGACY_SAVE, Family::Ipv4);
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.source, Source::IptablesLegacy);
        assert_eq!(r.text, "-A INPUT -p udp -m udp --dport 6000 -j DROP");
        assert_eq!(
            (r.hook, r.verdict, r.packets, r.bytes),
            (Some(Hook::Input), Verdict::Drop, 5, 145)
        );
    }

    #[test]
    fn iptables_save_without_counters_and_odd_quoting() {
        let text = "*filter\n:INPUT DROP [0:0]\n:MY - [0:0]\n\
            -A INPUT -m comment --comment \"say \\\"-j DROP\\\" here\" -j MY\n\
            -A MY -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n";
        let rules = parse_iptables_save(text, Family::Ipv4);
        assert_eq!(rules.len(), 2);
        assert_eq!((rules[0].verdict, rules[0].packets), (Verdict::Other, 0));
        assert_eq!((rules[1].hook, rules[1].verdict), (None, Verdict::Reject));
    }

    #[test]
    fn nft_ruleset_native_rules() {
        let nft = parse_nft_ruleset(NFT_RULESET, NFT_RULESET_STDERR);
        // Five iptables-nft tables are warned about; tracer_4242 is tracer's own.
        assert!(nft.native.iter().all(|r| r.source == Source::Nft));
        assert!(
            !nft.native
                .iter()
                .any(|r| r.table == "filter" || r.table.starts_with("tracer_"))
        );
        assert!(
            nft.managed
                .iter()
                .all(|r| ["filter", "nat", "mangle", "raw"].contains(&r.table.as_str()))
        );
        assert_eq!(nft.managed.len(), 11);
        let tables: Vec<(Family, &str)> = nft
            .native
            .iter()
            .map(|r| (r.family, r.table.as_str()))
            .collect();
        assert!(tables.contains(&(Family::Inet, "fw")));
        assert!(tables.contains(&(Family::Ipv6, "six")));
        assert!(tables.contains(&(Family::Bridge, "br")));
        assert!(tables.contains(&(Family::Netdev, "nd")));
        assert_eq!(nft.native.len(), 15, "{:#?}", nft.native);

        let rules = &nft.native;
        let lo = find(rules, "fw", "input", "iifname");
        assert_eq!(lo.text, "iifname \"lo\" accept");
        assert_eq!(
            (lo.hook, lo.priority, lo.verdict, lo.counted, lo.handle),
            (Some(Hook::Input), Some(-5), Verdict::Accept, false, Some(7))
        );
        let d = find(rules, "fw", "input", "udp dport 7000");
        assert_eq!(d.text, "udp dport 7000 counter drop");
        assert_eq!(
            (d.verdict, d.counted, d.packets, d.bytes, d.handle),
            (Verdict::Drop, true, 5, 145, Some(9))
        );
        let r = find(rules, "fw", "input", "udp dport 7001");
        assert_eq!(
            (r.verdict, r.packets, r.handle),
            (Verdict::Reject, 5, Some(10))
        );
        // Braces and '#' inside a quoted comment.
        let r = find(rules, "fw", "input", "tcp dport 8080");
        assert_eq!(
            r.text,
            "tcp dport 8080 counter reject with tcp reset comment \"no { proxy } here\""
        );
        assert_eq!((r.verdict, r.handle), (Verdict::Reject, Some(11)));
        let j = find(rules, "fw", "input", "jump icmp_chk");
        assert_eq!((j.verdict, j.counted), (Verdict::Other, false));
        // A verdict map's verdicts are not the rule's.
        let v = find(rules, "fw", "input", "vmap");
        assert_eq!((v.verdict, v.handle), (Verdict::Other, Some(14)));
        let a = find(rules, "fw", "input", "udp dport 7002");
        assert_eq!((a.verdict, a.packets), (Verdict::Accept, 5));

        // Regular chains have no hook.
        let icmp = find(rules, "fw", "icmp_chk", "echo-request");
        assert_eq!(
            (icmp.hook, icmp.priority, icmp.verdict),
            (None, None, Verdict::Drop)
        );
        let ret = find(rules, "fw", "tcp_chk", "return");
        assert_eq!(ret.verdict, Verdict::Other);

        // Named and numeric priorities.
        let fwd = find(rules, "fw", "fwd_c", "10.9.9.9");
        assert_eq!((fwd.hook, fwd.priority), (Some(Hook::Forward), Some(10)));
        let post = find(rules, "fw", "post", "masquerade");
        assert_eq!(
            (post.hook, post.priority, post.verdict),
            (Some(Hook::Postrouting), Some(105), Verdict::Other)
        );
        let six = find(rules, "six", "in", "7003");
        assert_eq!(
            (
                six.family,
                six.hook,
                six.priority,
                six.verdict,
                six.packets,
                six.bytes
            ),
            (
                Family::Ipv6,
                Some(Hook::Input),
                Some(-300),
                Verdict::Drop,
                1,
                49
            )
        );
        let br = find(rules, "br", "fwd_c", "arp");
        assert_eq!(
            (br.family, br.hook, br.priority),
            (Family::Bridge, Some(Hook::Forward), Some(-200))
        );
        let nd = find(rules, "nd", "ing", "udp dport 9");
        assert_eq!(
            (nd.family, nd.hook, nd.priority, nd.verdict, nd.packets),
            (
                Family::Netdev,
                Some(Hook::Ingress),
                Some(-500),
                Verdict::Drop,
                5
            )
        );
        // The set's elements, spread over lines, are no rules.
        assert!(!rules.iter().any(|r| r.text.contains("10.201.0.0")));
    }

    #[test]
    fn nft_warnings_on_stdout_too() {
        // Newer nft versions print the warning before the table, on stdout.
        let out = "# Warning: table ip filter is managed by iptables-nft, do not touch!\n\
            table ip filter { # handle 1\n\tchain INPUT { # handle 1\n\
            \t\ttype filter hook input priority filter; policy accept;\n\
            \t\tcounter packets 1 bytes 2 # handle 2\n\t}\n}\n\
            table inet t { # handle 2\n\tchain c { # handle 1\n\
            \t\ttype filter hook output priority 0; policy drop;\n\t}\n}\n";
        let nft = parse_nft_ruleset(out, "");
        assert!(nft.native.is_empty());
        assert_eq!(nft.managed.len(), 1);
    }

    #[test]
    fn merge_gives_iptables_nft_rules_their_handles() {
        let rules = all();
        // 9 + 2 iptables-nft, 1 legacy, 15 native nft.
        assert_eq!(rules.len(), 27);
        let by = |src, fam, table: &str, chain: &str, text: &str| {
            rules
                .iter()
                .find(|r| {
                    r.source == src
                        && r.family == fam
                        && r.table == table
                        && r.chain == chain
                        && r.text.contains(text)
                })
                .unwrap_or_else(|| panic!("no {table}/{chain} {text}"))
        };
        let handle = |src, fam, table, chain, text| by(src, fam, table, chain, text).handle;
        use Family::*;
        use Source::*;
        assert_eq!(handle(Iptables, Ipv4, "filter", "INPUT", "5353"), Some(2));
        assert_eq!(
            handle(Iptables, Ipv4, "filter", "INPUT", "OVERLAY"),
            Some(4)
        );
        assert_eq!(
            handle(Iptables, Ipv4, "filter", "OVERLAY", "tcp-reset"),
            Some(5)
        );
        assert_eq!(
            handle(Iptables, Ipv4, "filter", "OVERLAY", "icmp-host"),
            Some(6)
        );
        assert_eq!(
            handle(Iptables, Ipv4, "filter", "OVERLAY", "vxlan in"),
            Some(7)
        );
        assert_eq!(handle(Iptables, Ipv4, "filter", "FORWARD", "-g"), Some(9));
        assert_eq!(
            handle(Iptables, Ipv4, "nat", "POSTROUTING", "MASQ"),
            Some(2)
        );
        assert_eq!(handle(Iptables, Ipv6, "filter", "INPUT", "5353"), Some(2));
        assert_eq!(handle(Iptables, Ipv6, "filter", "INPUT", "REJECT"), Some(3));
        assert_eq!(
            handle(IptablesLegacy, Ipv4, "filter", "INPUT", "6000"),
            None
        );
        // The text stays iptables', and lookup by what a trace event says finds it.
        let r = lookup(&rules, Ipv4, "filter", "OVERLAY", 6).unwrap();
        assert_eq!(
            r.text,
            "-A OVERLAY -p icmp -j REJECT --reject-with icmp-host-prohibited"
        );
        assert_eq!(
            lookup(&rules, Inet, "fw", "input", 9).unwrap().text,
            "udp dport 7000 counter drop"
        );
        assert!(lookup(&rules, Ipv6, "filter", "INPUT", 9).is_none());
    }

    #[test]
    fn unwarned_iptables_nft_tables_are_still_iptables() {
        // nft warns only about tables with xtables expressions: this one has none.
        let ipt = parse_iptables_save(
            "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 02:28:18 2026\n*filter\n\
             :INPUT ACCEPT [0:0]\n[4:116] -A INPUT -p udp -m udp --dport 5353 -j DROP\nCOMMIT\n",
            Family::Ipv4,
        );
        let nft = parse_nft_ruleset(
            "table ip filter { # handle 1\n\tchain INPUT { # handle 1\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tudp dport 5353 counter packets 4 bytes 116 drop # handle 2\n\t}\n}\n",
            "",
        );
        assert_eq!(nft.native.len(), 1);
        let rules = merge(ipt, nft);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].source, Source::Iptables);
        assert_eq!(rules[0].handle, Some(2));
    }

    #[test]
    fn counter_values_are_not_rule_text() {
        for (raw, want) in [
            (
                "udp dport 7000 counter packets 5 bytes 145 drop",
                "udp dport 7000 counter drop",
            ),
            ("counter packets 0 bytes 0 jump X", "counter jump X"),
            (
                "udp dport 4789  counter packets 5 bytes 145 accept",
                "udp dport 4789  counter accept",
            ),
            (
                "counter packets 1 bytes 2 log prefix \"counter packets 3 bytes 4 \" drop",
                "counter log prefix \"counter packets 3 bytes 4 \" drop",
            ),
            ("counter name \"cnt\" accept", "counter name \"cnt\" accept"),
        ] {
            assert_eq!(strip_counter_values(raw), want);
        }
    }

    #[test]
    fn priorities() {
        for (p, fam, want) in [
            ("-350", Family::Inet, Some(-350)),
            ("filter", Family::Inet, Some(0)),
            ("filter-5", Family::Ipv4, Some(-5)),
            ("srcnat+5", Family::Ipv4, Some(105)),
            ("dstnat", Family::Ipv4, Some(-100)),
            ("security", Family::Ipv6, Some(50)),
            ("filter", Family::Bridge, Some(-200)),
            ("out", Family::Bridge, Some(100)),
            ("out", Family::Ipv4, None),
            ("bogus", Family::Ipv4, None),
        ] {
            assert_eq!(parse_priority(p, fam), want, "{p} {fam:?}");
        }
    }

    #[test]
    fn moved_reports_drop_and_reject_deltas() {
        let before = all();
        let mut after = before.clone();
        let bump = |rules: &mut Vec<Rule>, src: Source, table: &str, text: &str, n: u64| {
            let r = rules
                .iter_mut()
                .find(|r| r.source == src && r.table == table && r.text.contains(text))
                .unwrap();
            r.packets += n;
            r.bytes += n * 29;
        };
        bump(&mut after, Source::Iptables, "filter", "--dport 5353", 7);
        bump(
            &mut after,
            Source::IptablesLegacy,
            "filter",
            "--dport 6000",
            2,
        );
        bump(
            &mut after,
            Source::Iptables,
            "filter",
            "icmp-host-prohibited",
            1,
        );
        bump(&mut after, Source::Nft, "fw", "udp dport 7000", 3);
        // Accepts and jumps moving are not drops.
        bump(&mut after, Source::Nft, "fw", "udp dport 7002", 3);
        bump(&mut after, Source::Iptables, "filter", "-j OVERLAY", 3);
        // A new rule inserted at the top of a chain shifts positions but not identities.
        let mut new = after[0].clone();
        new.text = "-A PREROUTING -s 192.0.2.1/32 -j DROP".into();
        new.verdict = Verdict::Drop;
        new.packets = 4;
        after.insert(0, new);

        let mut got: Vec<(String, u64)> = moved(&before, &after)
            .into_iter()
            .map(|(r, d)| (r.text, d))
            .collect();
        got.sort();
        let mut want = vec![
            ("-A INPUT -p udp -m udp --dport 5353 -j DROP".to_string(), 7),
            ("-A INPUT -p udp -m udp --dport 6000 -j DROP".to_string(), 2),
            (
                "-A OVERLAY -p icmp -j REJECT --reject-with icmp-host-prohibited".to_string(),
                1,
            ),
            ("-A PREROUTING -s 192.0.2.1/32 -j DROP".to_string(), 4),
            ("udp dport 7000 counter drop".to_string(), 3),
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(moved(&before, &before).is_empty());
    }

    #[test]
    fn moved_treats_a_counter_that_went_down_as_reset() {
        let before = all();
        let mut after = before.clone();
        let r = after
            .iter_mut()
            .find(|r| r.text.contains("--dport 5353") && r.family == Family::Ipv4)
            .unwrap();
        r.packets = 2;
        r.handle = Some(40); // iptables-restore recreated it
        let got = moved(&before, &after);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 2);
    }
}
