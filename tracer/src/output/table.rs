//! Live table for a terminal: redrawn every interval, sorted by traffic,
//! cut to the terminal's width and height.

use std::{
    collections::HashMap,
    io::{self, Write},
    rc::Rc,
};

use tracer_ebpf::FlowId;

use super::{
    DropRow, Endpoints, FlowRow, FragRow, IcmpRow, MtuRow, Report, RuleRow, Scope, Sink,
    VerdictRow, inner, vni,
};
use crate::{
    collectors::drops::DropCounts, collectors::drops::reasons::hint, collectors::flows::Counts,
    collectors::tally::Accumulate as _, model::Direction, output::text::drop_line, rules::Family,
};

/// Size of the terminal, or of the test's pretend one.
pub trait Screen {
    fn size(&self) -> (usize, usize);
}

/// The terminal on stdout.
pub struct Terminal;

impl Screen for Terminal {
    fn size(&self) -> (usize, usize) {
        // SAFETY: winsize is plain integers; all-zero is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills a winsize.
        if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_col > 0
        {
            (ws.ws_col as usize, ws.ws_row as usize)
        } else {
            (120, 40)
        }
    }
}

type DropIdent = (String, Option<String>, FlowId, String, String);
type RowKey = (Rc<str>, Rc<str>, Direction, FlowId);

pub struct TableSink<W: Write, S: Screen> {
    out: W,
    screen: S,
    /// Run totals per row, for the cumulative columns.
    totals: HashMap<RowKey, Counts>,
    drop_totals: HashMap<DropIdent, DropCounts>,
}

impl<W: Write, S: Screen> TableSink<W, S> {
    pub fn new(out: W, screen: S) -> Self {
        Self {
            out,
            screen,
            totals: HashMap::new(),
            drop_totals: HashMap::new(),
        }
    }
}

#[rustfmt::skip]
const FLOW_HEADERS: [&str; 15] = [
    "NETNS", "IFACE", "DIR", "PROTO", "SOURCE", "DESTINATION", "VNI", "INNER", "PKT/s", "BYTES/s",
    "PACKETS", "BYTES", "FRAGS", "DF", "MAXLEN",
];
/// Columns that give up width first when the terminal is narrow.
const FLOW_SHRINKABLE: [usize; 3] = [7, 4, 5];
#[rustfmt::skip]
const DROP_HEADERS: [&str; 12] = [
    "NETNS", "IFACE", "PROTO", "SOURCE", "DESTINATION", "VNI", "INNER", "REASON", "DROP/s", "DROPS",
    "WHERE", "MEANING",
];
const DROP_SHRINKABLE: [usize; 5] = [11, 6, 10, 3, 4];
#[rustfmt::skip]
const VERDICT_HEADERS: [&str; 12] = [
    "NETNS", "IFACE", "HOOK", "TABLE", "PROTO", "SOURCE", "DESTINATION", "VNI", "INNER", "ACCEPTED",
    "DROPPED", "RULE",
];
const VERDICT_SHRINKABLE: [usize; 4] = [11, 8, 5, 6];
#[rustfmt::skip]
const ICMP_HEADERS: [&str; 9] = [
    "NETNS", "IFACE", "DIR", "KIND", "MTU", "ABOUT PROTO", "SOURCE", "DESTINATION", "COUNT",
];
const ICMP_SHRINKABLE: [usize; 2] = [6, 7];
#[rustfmt::skip]
const FRAG_HEADERS: [&str; 14] = [
    "NETNS", "IFACE", "PROTO", "SOURCE", "DESTINATION", "VNI", "INNER", "DATAGRAMS", "REASSEMBLED",
    "DGRAMS LOST", "FRAGMENTS", "FRAGS LOST", "REASM FAILED", "DIR",
];
const FRAG_SHRINKABLE: [usize; 3] = [6, 3, 4];
const MTU_HEADERS: [&str; 4] = ["MTU PROBLEM", "LIMIT", "FLOWS HIT", "WHAT"];
const MTU_SHRINKABLE: [usize; 1] = [3];
#[rustfmt::skip]
const RULE_HEADERS: [&str; 9] = [
    "NETNS", "TABLE", "CHAIN", "PROTO", "SOURCE", "DESTINATION", "VERDICT", "PACKETS", "RULE",
];
const RULE_SHRINKABLE: [usize; 1] = [8];

fn human(n: f64) -> String {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = n;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn inner_cell(id: &FlowId) -> String {
    inner(id)
        .map(|i| format!("{} {} > {}", i.proto, i.src_str(), i.dst_str()))
        .unwrap_or_default()
}

fn drop_cells(row: &DropRow, secs: f64, total: &DropCounts) -> Vec<String> {
    let outer = Endpoints::of(&row.id.outer);
    vec![
        row.netns.clone(),
        row.iface.clone().unwrap_or_else(|| "-".into()),
        outer.proto.to_string(),
        outer.src_str(),
        outer.dst_str(),
        vni(&row.id).map(|v| v.to_string()).unwrap_or_default(),
        inner_cell(&row.id),
        row.reason.clone().unwrap_or_else(|| "-".into()),
        human(row.counts.packets as f64 / secs),
        total.packets.to_string(),
        row.location.clone(),
        hint(row.reason.as_deref(), &row.location)
            .unwrap_or("")
            .to_string(),
    ]
}

fn cells(row: &FlowRow, rate: &Counts, secs: f64, total: &Counts) -> Vec<String> {
    let outer = Endpoints::of(&row.id.outer);
    let inner = inner_cell(&row.id);
    vec![
        row.netns.to_string(),
        row.iface.to_string(),
        if row.dir == Direction::Ingress {
            "in"
        } else {
            "out"
        }
        .to_string(),
        outer.proto.to_string(),
        outer.src_str(),
        outer.dst_str(),
        vni(&row.id).map(|v| v.to_string()).unwrap_or_default(),
        inner,
        human(rate.packets as f64 / secs),
        human(rate.bytes as f64 / secs),
        total.packets.to_string(),
        total.bytes.to_string(),
        format!("{}+{}", total.frags_first, total.frags_rest),
        total.df.to_string(),
        total.max_len.to_string(),
    ]
}

fn fit(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        format!("{cell:<width$}")
    } else if width == 0 {
        String::new()
    } else {
        let s: String = cell.chars().take(width - 1).collect();
        format!("{s}~")
    }
}

/// Lays out `rows` (header first) in at most `width` columns of text,
/// narrowing the `shrinkable` columns first.
fn layout(rows: &[Vec<String>], width: usize, shrinkable: &[usize]) -> Vec<String> {
    let ncols = rows[0].len();
    let mut widths: Vec<usize> = (0..ncols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * (w.len() - 1);
    for &c in shrinkable {
        let over = total(&widths).saturating_sub(width);
        if over == 0 {
            break;
        }
        let min = rows[0][c].len().max(7);
        widths[c] -= over.min(widths[c].saturating_sub(min));
    }
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| fit(c, *w)).collect();
            let line = line.join("  ");
            let line = line.trim_end();
            line.chars().take(width).collect()
        })
        .collect()
}

impl<W: Write, S: Screen> TableSink<W, S> {
    /// Flow rows with their run totals, busiest first.
    fn flow_entries<'a>(&mut self, r: &'a Report) -> Vec<(&'a FlowRow, Counts)> {
        let mut entries: Vec<(&FlowRow, Counts)> = r
            .flows
            .iter()
            .map(|row| {
                let total = match r.scope {
                    Scope::Total => row.counts,
                    _ => {
                        let key = (row.netns.clone(), row.iface.clone(), row.dir, row.id);
                        let t = self.totals.entry(key).or_default();
                        t.add(&row.counts);
                        *t
                    }
                };
                (row, total)
            })
            .collect();
        entries.sort_by(|a, b| {
            (b.0.counts.bytes, b.1.bytes)
                .cmp(&(a.0.counts.bytes, a.1.bytes))
                .then_with(|| (&a.0.netns, &a.0.iface).cmp(&(&b.0.netns, &b.0.iface)))
        });
        entries
    }

    fn drop_entries<'a>(&mut self, r: &'a Report) -> Vec<(&'a DropRow, DropCounts)> {
        let mut entries: Vec<(&DropRow, DropCounts)> = r
            .drops
            .iter()
            .map(|row| {
                let total = match r.scope {
                    Scope::Total => row.counts,
                    _ => {
                        let key = (
                            row.netns.clone(),
                            row.iface.clone(),
                            row.id,
                            row.reason.clone().unwrap_or_else(|| "-".into()),
                            row.location.clone(),
                        );
                        let t = self.drop_totals.entry(key).or_default();
                        t.add(&row.counts);
                        *t
                    }
                };
                (row, total)
            })
            .collect();
        entries.sort_by(|a, b| {
            (b.0.counts.packets, b.1.packets).cmp(&(a.0.counts.packets, a.1.packets))
        });
        entries
    }
}

/// One table of the screen: its header, rows (best first) and what to call
/// the rows that did not fit.
struct Section<'a> {
    headers: &'a [&'a str],
    shrinkable: &'a [usize],
    rows: Vec<Vec<String>>,
    what: &'a str,
}

impl Section<'_> {
    /// Writes at most `room` lines; returns how many it wrote.
    fn write(&self, out: &mut impl Write, width: usize, room: usize) -> io::Result<usize> {
        let shown = self.rows.len().min(room.saturating_sub(2).max(1));
        let mut rows = vec![
            self.headers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ];
        rows.extend(self.rows[..shown].iter().cloned());
        let mut written = 0;
        for line in layout(&rows, width, self.shrinkable) {
            writeln!(out, "{line}")?;
            written += 1;
        }
        if shown < self.rows.len() {
            writeln!(out, "... {} more {}", self.rows.len() - shown, self.what)?;
            written += 1;
        }
        Ok(written)
    }
}

fn verdict_cells(row: &VerdictRow) -> Vec<String> {
    let outer = Endpoints::of(&row.id.outer);
    vec![
        row.netns.clone(),
        row.iface.clone().unwrap_or_else(|| "-".into()),
        row.hook.to_string(),
        row.table.to_string(),
        outer.proto.to_string(),
        outer.src_str(),
        outer.dst_str(),
        vni(&row.id).map(|v| v.to_string()).unwrap_or_default(),
        inner_cell(&row.id),
        row.counts.accepted().to_string(),
        row.counts.dropped().to_string(),
        row.rule.clone().unwrap_or_default(),
    ]
}

fn icmp_cells(row: &IcmpRow) -> Vec<String> {
    let about = Endpoints::of(&row.id.outer);
    vec![
        row.netns.clone(),
        row.iface.clone().unwrap_or_else(|| "-".into()),
        row.dir.to_string(),
        row.kind.to_string(),
        row.mtu.map(|m| m.to_string()).unwrap_or_default(),
        about.proto.to_string(),
        about.src_str(),
        about.dst_str(),
        row.count.to_string(),
    ]
}

fn frag_cells(row: &FragRow) -> Vec<String> {
    let outer = Endpoints::of(&row.id.outer);
    vec![
        row.netns.clone(),
        row.iface.clone(),
        outer.proto.to_string(),
        outer.src_str(),
        outer.dst_str(),
        vni(&row.id).map(|v| v.to_string()).unwrap_or_default(),
        inner_cell(&row.id),
        row.datagrams.to_string(),
        row.reassembled.to_string(),
        row.datagrams_lost.to_string(),
        row.fragments.to_string(),
        row.fragments_lost.to_string(),
        row.reassembly_failed.to_string(),
        row.dir.to_string(),
    ]
}

fn rule_cells(row: &RuleRow) -> Vec<String> {
    let outer = Endpoints::of(&row.id.outer);
    vec![
        row.netns.clone(),
        format!("{} {}", row.family.map_or("?", Family::as_str), row.table),
        row.chain.clone(),
        outer.proto.to_string(),
        outer.src_str(),
        outer.dst_str(),
        row.verdict.to_string(),
        row.count.to_string(),
        row.rule.clone().unwrap_or_else(|| match row.handle {
            Some(h) => format!("handle {h}"),
            None => "(policy)".into(),
        }),
    ]
}

fn mtu_cells(row: &MtuRow) -> Vec<String> {
    vec![
        row.finding.kind.as_str().to_string(),
        row.finding.limit.to_string(),
        row.flows.len().to_string(),
        row.finding.finding.clone(),
    ]
}

impl<W: Write, S: Screen> Sink for TableSink<W, S> {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        let (width, height) = self.screen.size();
        if r.scope == Scope::First {
            // Shown at once under the table; the next redraw lists it among the drops.
            for row in &r.drops {
                let line = format!("NEW {}", drop_line(r.scope, row));
                writeln!(self.out, "{}", fit(&line, width).trim_end())?;
            }
            return self.out.flush();
        }
        let secs = r.elapsed.as_secs_f64().max(1e-3);
        let flows = self.flow_entries(r);
        let drops = self.drop_entries(r);
        let mut verdicts: Vec<&VerdictRow> = r.verdicts.iter().collect();
        verdicts.sort_by_key(|v| std::cmp::Reverse((v.counts.dropped(), v.counts.accepted())));
        let mut title = format!(
            "tracer  {} {:.1}s  {} flows  {} drop kinds  {} verdicts",
            if r.scope == Scope::Total {
                "totals for"
            } else {
                "interval"
            },
            r.elapsed.as_secs_f64(),
            flows.len(),
            drops.len(),
            verdicts.len(),
        );
        let h = &r.health;
        for (n, label, what) in [
            (
                h.flow_map_full,
                "FLOW MAP FULL",
                "packets not counted (raise --flow-map-size)",
            ),
            (h.drop_map_full, "DROP MAP FULL", "drops not counted"),
            (
                h.verdict_map_full,
                "VERDICT MAP FULL",
                "verdicts not counted",
            ),
            (h.drop_events_lost, "EVENTS LOST", "new drops not announced"),
            (h.icmp_map_full, "ICMP MAP FULL", "ICMP errors not counted"),
            (
                h.frag_unmatched,
                "UNMATCHED FRAGMENTS",
                "counted without ports",
            ),
            (
                h.explain_events_lost,
                "TRACE EVENTS LOST",
                "--explain counts are lower bounds",
            ),
        ] {
            if n > 0 {
                title.push_str(&format!("  {label}: {n} {what}"));
            }
        }
        if r.scope == Scope::Interval {
            // Clear the screen and home the cursor for a redraw.
            write!(self.out, "\x1b[H\x1b[2J")?;
        }
        writeln!(self.out, "{}", fit(&title, width).trim_end())?;
        let sections = [
            Section {
                headers: &MTU_HEADERS,
                shrinkable: &MTU_SHRINKABLE,
                rows: r.mtu.iter().map(mtu_cells).collect(),
                what: "MTU problems",
            },
            Section {
                headers: &RULE_HEADERS,
                shrinkable: &RULE_SHRINKABLE,
                rows: r.rules.iter().map(rule_cells).collect(),
                what: "traced rule verdicts",
            },
            Section {
                headers: &DROP_HEADERS,
                shrinkable: &DROP_SHRINKABLE,
                rows: drops
                    .iter()
                    .map(|(row, t)| drop_cells(row, secs, t))
                    .collect(),
                what: "drop kinds",
            },
            Section {
                headers: &VERDICT_HEADERS,
                shrinkable: &VERDICT_SHRINKABLE,
                rows: verdicts.iter().map(|v| verdict_cells(v)).collect(),
                what: "verdicts",
            },
            Section {
                headers: &FRAG_HEADERS,
                shrinkable: &FRAG_SHRINKABLE,
                rows: r.frags.iter().map(frag_cells).collect(),
                what: "fragmented flows",
            },
            Section {
                headers: &ICMP_HEADERS,
                shrinkable: &ICMP_SHRINKABLE,
                rows: r.icmps.iter().map(icmp_cells).collect(),
                what: "ICMP errors",
            },
            Section {
                headers: &FLOW_HEADERS,
                shrinkable: &FLOW_SHRINKABLE,
                rows: flows
                    .iter()
                    .map(|(row, t)| cells(row, &row.counts, secs, t))
                    .collect(),
                what: "flows",
            },
        ];
        // Each non-empty section gets an equal share of the screen; what one
        // does not need goes to the next. Flows always show their header.
        let mut room = height.saturating_sub(1);
        let mut left = sections
            .iter()
            .filter(|s| !s.rows.is_empty())
            .count()
            .max(1);
        for (i, section) in sections.iter().enumerate() {
            let last = i == sections.len() - 1;
            if section.rows.is_empty() && !last {
                continue;
            }
            let share = if last { room } else { room / left };
            room = room.saturating_sub(section.write(&mut self.out, width, share)?);
            left = left.saturating_sub(1).max(1);
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracer_ebpf::{FAMILY_IPV4, TUPLE_PORTS, Tuple};

    use super::*;
    use crate::model::Direction;

    struct Fixed(usize, usize);
    impl Screen for Fixed {
        fn size(&self) -> (usize, usize) {
            (self.0, self.1)
        }
    }

    fn row(iface: &str, bytes: u64) -> FlowRow {
        let mut t = Tuple {
            family: FAMILY_IPV4,
            proto: 17,
            sport: 1000,
            dport: 53,
            flags: TUPLE_PORTS,
            ..Tuple::default()
        };
        t.src[..4].copy_from_slice(&[10, 1, 0, 1]);
        t.dst[..4].copy_from_slice(&[10, 1, 0, 2]);
        FlowRow {
            netns: "ns".into(),
            iface: iface.into(),
            dir: Direction::Egress,
            id: FlowId {
                outer: t,
                ..FlowId::default()
            },
            counts: Counts {
                packets: bytes / 100,
                bytes,
                max_len: 100,
                ..Counts::default()
            },
        }
    }

    fn render(width: usize, height: usize, reports: &[Report]) -> String {
        let mut out = Vec::new();
        let mut sink = TableSink::new(&mut out, Fixed(width, height));
        for r in reports {
            sink.report(r).unwrap();
        }
        String::from_utf8(out).unwrap()
    }

    fn interval(flows: Vec<FlowRow>) -> Report {
        Report {
            scope: Scope::Interval,
            elapsed: Duration::from_secs(2),
            flows,
            ..Report::default()
        }
    }

    #[test]
    fn sorted_by_bytes_with_rates_and_running_totals() {
        let out = render(
            200,
            20,
            &[
                interval(vec![row("a", 1000)]),
                interval(vec![row("a", 200), row("b", 4000)]),
            ],
        );
        let second = out.rsplit("\x1b[H\x1b[2J").next().unwrap();
        let lines: Vec<&str> = second.lines().collect();
        assert_eq!(
            lines[0],
            "tracer  interval 2.0s  2 flows  0 drop kinds  0 verdicts"
        );
        assert!(lines[1].starts_with("NETNS  IFACE  DIR  PROTO  SOURCE"));
        // b moved more bytes this interval: first. a: 200 bytes over 2 s, 1200 in all.
        assert!(
            lines[2].starts_with("ns     b      out  udp    10.1.0.1:1000"),
            "{second}"
        );
        assert!(
            lines[3].contains(" 100 ") && lines[3].contains(" 1200 "),
            "{second}"
        );
    }

    #[test]
    fn fits_narrow_and_short_terminals() {
        let flows: Vec<FlowRow> = (0..30).map(|i| row(&format!("if{i}"), 100 * i)).collect();
        let out = render(60, 10, &[interval(flows)]);
        let body = out.trim_start_matches("\x1b[H\x1b[2J");
        assert!(body.lines().all(|l| l.chars().count() <= 60), "{body}");
        assert_eq!(body.lines().count(), 10);
        assert_eq!(body.lines().last().unwrap(), "... 23 more flows");
    }

    #[test]
    fn map_full_is_shown_in_the_title() {
        let mut r = interval(vec![]);
        r.health.flow_map_full = 5;
        r.health.drop_map_full = 2;
        let out = render(250, 10, &[r]);
        assert!(
            out.contains("FLOW MAP FULL: 5 packets not counted"),
            "{out}"
        );
        assert!(out.contains("DROP MAP FULL: 2 drops not counted"), "{out}");
    }

    fn drop(reason: &str, packets: u64) -> DropRow {
        DropRow {
            netns: "hb".into(),
            iface: Some("ul0".into()),
            id: row("x", 0).id,
            reason: Some(reason.into()),
            location: "nf_hook_slow+0x9a".into(),
            fragment: None,
            counts: DropCounts {
                packets,
                bytes: packets * 100,
            },
        }
    }

    #[test]
    fn drops_come_first_with_their_meaning_and_new_ones_show_at_once() {
        let mut r = interval(vec![row("a", 1000)]);
        r.drops = vec![drop("NO_SOCKET", 2), drop("NETFILTER_DROP", 8)];
        let first = Report {
            scope: Scope::First,
            drops: vec![drop("NETFILTER_DROP", 1)],
            ..Report::default()
        };
        let out = render(250, 20, &[first, r]);
        let (new, table) = out.split_once("\x1b[H\x1b[2J").unwrap();
        assert!(
            new.starts_with("NEW drop first netns=hb iface=ul0 udp"),
            "{new}"
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("NETNS  IFACE  PROTO"), "{table}");
        assert!(
            lines[2].contains("NETFILTER_DROP") && lines[2].contains("a netfilter"),
            "{table}"
        );
        assert!(
            lines[3].contains("NO_SOCKET") && lines[3].contains("nothing listens"),
            "{table}"
        );
        assert!(lines[4].starts_with("NETNS  IFACE  DIR"), "{table}");
    }
}
