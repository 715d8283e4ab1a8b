//! Reading `nft -a list ruleset` output.

use super::{
    rule::{Family, Rule, Source, Verdict},
    words::{NFT, words},
};
use crate::model::Hook;

/// The rules of `nft -a list ruleset`, split by who manages their table.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct NftRules {
    /// Native nftables rules, for the snapshot.
    pub native: Vec<Rule>,
    /// Rules of tables iptables-nft manages (nft names them in a warning),
    /// used only for their handles.
    pub managed: Vec<Rule>,
}

/// Parses nft's text listing; `stderr` may hold its "managed by iptables-nft" warnings.
pub(super) fn parse_nft_ruleset(stdout: &str, stderr: &str) -> NftRules {
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
                let words = words(code, NFT);
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
                    target: words
                        .iter()
                        .zip(words.iter().skip(1))
                        .filter(|(w, _)| matches!(w.as_str(), "jump" | "goto"))
                        .map(|(_, t)| unquote(t).to_string())
                        .next_back(),
                    via: Vec::new(),
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

/// Splits off a `#` comment outside quotes.
pub(super) fn split_comment(line: &str) -> (&str, Option<&str>) {
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
pub(super) fn brace_delta(code: &str) -> i32 {
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

pub(super) fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// The rule as its user wrote it: `counter packets 5 bytes 145 drop` becomes
/// `counter drop` (the values are in [`Rule::packets`] and [`Rule::bytes`]).
pub(super) fn strip_counter_values(code: &str) -> String {
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
pub(super) fn nft_counter(words: &[String]) -> (bool, u64, u64) {
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
pub(super) fn nft_verdict(words: &[String]) -> Verdict {
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
pub(super) fn parse_chain_type(code: &str, family: Family) -> (Option<Hook>, Option<i32>) {
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
pub(super) fn parse_priority(p: &str, family: Family) -> Option<i32> {
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
