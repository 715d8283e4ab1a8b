//! Drawing the live view's [`State`] into a ratatui frame: the same code
//! draws on the terminal and, in tests, into a `TestBackend`.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap},
};

use super::state::{HISTORY, State, Sticky, Tab};
use crate::{
    analysis::paths::{Lost, PathRow},
    collectors::drops::reasons::hint,
    output::{DropRow, Endpoints, VerdictRow, inner, text::packet, vni},
};

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().add_modifier(Modifier::DIM);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);

pub fn draw(f: &mut Frame, s: &State) {
    let footer_height = match &s.editing {
        Some((_, Some(_))) => 2,
        _ => 1,
    };
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(footer_height),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(header_line(s)), header);
    f.render_widget(Paragraph::new(tabs_line(s)), tabs);
    match s.tab {
        Tab::Paths if s.detail => detail(f, body, s),
        Tab::Paths => paths_table(f, body, s),
        Tab::Drops => drops_table(f, body, s),
        Tab::Verdicts => verdicts_table(f, body, s),
    }
    footer_lines(f, footer, s);
    if s.help {
        help(f);
    }
}

fn header_line(s: &State) -> Line<'static> {
    let mut spans = vec![
        Span::styled("tracer", BOLD),
        Span::raw(format!(
            "  {:.0}s  {} paths  {} drop kinds  {} verdicts  ",
            s.elapsed.as_secs_f64(),
            s.paths.len(),
            s.drops.len(),
            s.verdicts.len()
        )),
    ];
    let h = &s.health;
    let problems: Vec<String> = [
        (h.flow_map_full, "FLOW MAP FULL"),
        (h.drop_map_full, "DROP MAP FULL"),
        (h.verdict_map_full, "VERDICT MAP FULL"),
        (h.drop_events_lost, "DROP EVENTS LOST"),
        (h.icmp_map_full, "ICMP MAP FULL"),
        (h.device_map_full, "DEVICE MAP FULL"),
        (h.frag_unmatched, "UNMATCHED FRAGMENTS"),
        (h.explain_events_lost, "TRACE EVENTS LOST"),
        (h.capture_rate_limited, "PCAP RATE LIMITED"),
        (h.capture_lost, "PCAP LOST"),
        (h.attach_failed, "ATTACH FAILED"),
        (h.totals_full, "TOTALS FULL"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{what} {n}"))
    .collect();
    if problems.is_empty() {
        spans.push(Span::raw("health ok"));
    } else {
        spans.push(Span::styled(
            format!("health: {}", problems.join(", ")),
            BOLD.add_modifier(Modifier::REVERSED),
        ));
    }
    if s.paused {
        spans.push(Span::styled(
            format!("  PAUSED ({} held)", s.held()),
            BOLD.add_modifier(Modifier::REVERSED),
        ));
    }
    Line::from(spans)
}

fn tabs_line(s: &State) -> Line<'static> {
    let mut spans = Vec::new();
    for (i, t) in Tab::ALL.iter().enumerate() {
        let style = if *t == s.tab { SELECTED } else { Style::new() };
        spans.push(Span::styled(format!(" {} {} ", i + 1, t.title()), style));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::raw(format!(" sort: {}", s.sort.name())));
    if let Some(f) = &s.filter {
        spans.push(Span::raw(format!("  filter: {}", f.text())));
    }
    let hidden = s.hidden_noise();
    if hidden > 0 {
        spans.push(Span::raw(format!("  {hidden} link-local hidden (a)")));
    }
    Line::from(spans)
}

fn footer_lines(f: &mut Frame, area: Rect, s: &State) {
    let lines = match &s.editing {
        Some((text, error)) => {
            let mut lines = vec![Line::from(vec![
                Span::styled("filter: ", BOLD),
                Span::raw(text.clone()),
                Span::styled("_", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            ])];
            if let Some(e) = error {
                // A caret under the bad token.
                let pad = "filter: ".len() + e.column.saturating_sub(1);
                lines.push(Line::from(format!("{}^ {}", " ".repeat(pad), e.message)));
            }
            lines
        }
        None => {
            let keys = "q quit  / filter  s sort  space pause  enter hops  1-3 tabs  ? help";
            match &s.status {
                Some(st) => vec![Line::from(vec![
                    Span::styled(st.clone(), BOLD),
                    Span::raw(format!("   {keys}")),
                ])],
                None => vec![Line::from(keys)],
            }
        }
    };
    f.render_widget(Paragraph::new(lines), area);
}

/// `udp 10.1.100.1:41000 > 10.1.100.2:5001`
fn flow_cell(id: &tracer_ebpf::FlowId) -> String {
    Endpoints::of(&id.outer).to_string()
}

/// A sparkline of the last intervals, in block characters.
pub fn sparkline(history: &std::collections::VecDeque<u64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = history.iter().copied().max().unwrap_or(0);
    let mut out: String = history
        .iter()
        .map(|&n| match n {
            0 => ' ',
            n => BARS[((n * 7).div_ceil(max.max(1)) as usize).min(7)],
        })
        .collect();
    while out.chars().count() < HISTORY {
        out.insert(0, ' ');
    }
    out
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e4 => format!("{:.1}k", n / 1e3),
        n if n >= 10.0 || n == 0.0 => format!("{n:.0}"),
        n => format!("{n:.1}"),
    }
}

/// The biggest loss of a path.
fn main_loss(p: &PathRow) -> Option<&Lost> {
    p.lost.iter().max_by_key(|l| l.count)
}

/// Why packets were lost, in one line.
fn why(l: &Lost) -> String {
    // Kernels without drop reasons (5.10) still say where it was dropped.
    let mut s = match (&l.reason, &l.location) {
        (Some(r), _) => r.clone(),
        (None, Some(at)) => format!("dropped at {at}"),
        (None, None) => "not seen dropped".into(),
    };
    if let Some(h) = l.hook {
        s.push_str(&format!(" at {h}"));
    }
    match (&l.rule, l.hint(), &l.mtu, &l.icmp) {
        (Some(r), _, _, _) => s.push_str(&format!(": {r}")),
        (None, _, Some(m), _) => s.push_str(&format!(": {m}")),
        (None, _, None, Some(i)) => s.push_str(&format!(": ICMP {i}")),
        (None, Some(h), None, None) => s.push_str(&format!(": {h}")),
        _ => {}
    }
    s
}

fn table_state(s: &State, len: usize) -> TableState {
    let mut t = TableState::default();
    if len > 0 {
        t.select(Some(s.selection()));
    }
    t
}

fn empty(f: &mut Frame, area: Rect, what: &str) {
    f.render_widget(Paragraph::new(format!("no {what} yet")).style(DIM), area);
}

fn paths_table(f: &mut Frame, area: Rect, s: &State) {
    let shown = s.shown_paths();
    if shown.is_empty() {
        return empty(f, area, "paths");
    }
    let rows: Vec<Row> = shown
        .iter()
        .map(|p| {
            let r = &p.row;
            let (place, reason) = match (main_loss(r), r.incomplete.first()) {
                (Some(l), _) => (
                    match l.after {
                        Some(i) => r.hops[i].label(),
                        None => r.place(l),
                    },
                    why(l),
                ),
                (None, Some(i)) => ("-".to_string(), format!("incomplete: {i}")),
                (None, None) => ("-".to_string(), String::new()),
            };
            let lost = r.lost_total();
            let row = Row::new(vec![
                Cell::from(flow_cell(&r.id)),
                Cell::from(vni(&r.id).map(|v| v.to_string()).unwrap_or_default()),
                Cell::from(r.sent().to_string()),
                Cell::from(r.arrived().to_string()),
                Cell::from(lost.to_string()).style(if lost > 0 { BOLD } else { Style::new() }),
                Cell::from(place),
                Cell::from(reason),
                Cell::from(human(p.rate)),
                Cell::from(sparkline(&p.history)),
            ]);
            dim(row, s, p)
        })
        .collect();
    let flow_w = shown
        .iter()
        .map(|p| flow_cell(&p.row.id).len())
        .max()
        .unwrap_or(4)
        .clamp(4, 48) as u16;
    let widths = [
        Constraint::Length(flow_w),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(18),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(HISTORY as u16),
    ];
    let header = Row::new([
        "FLOW",
        "VNI",
        "SENT",
        "ARRIVED",
        "LOST",
        "LOST AFTER",
        "WHY",
        "PKT/s",
        "TREND",
    ])
    .style(BOLD);
    let t = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(SELECTED);
    f.render_stateful_widget(t, area, &mut table_state(s, shown.len()));
}

fn dim<'a, R>(row: Row<'a>, s: &State, sticky: &Sticky<R>) -> Row<'a> {
    if s.live(sticky) { row } else { row.style(DIM) }
}

fn detail(f: &mut Frame, area: Rect, s: &State) {
    let shown = s.shown_paths();
    let Some(p) = shown.get(s.selection()) else {
        return empty(f, area, "paths");
    };
    let r = &p.row;
    let mut lines = vec![Line::from(vec![
        Span::styled(packet(&r.id), BOLD),
        Span::raw(format!(
            "   sent {}  arrived {}  lost {}   (esc: back)",
            r.sent(),
            r.arrived(),
            r.lost_total()
        )),
    ])];
    let losses = |after: Option<usize>, lines: &mut Vec<Line>| {
        for l in r.lost.iter().filter(|l| l.after == after) {
            let mut text = format!(
                "      x {} lost in {}{}: {}",
                l.count,
                l.netns,
                l.iface
                    .as_deref()
                    .map(|i| format!("/{i}"))
                    .unwrap_or_default(),
                why(l)
            );
            if let Some(loc) = &l.location {
                text.push_str(&format!(" (at {loc})"));
            }
            lines.push(Line::styled(text, BOLD));
            if l.rule.is_some()
                && let Some(h) = hint(l.reason.as_deref(), l.location.as_deref().unwrap_or(""))
            {
                lines.push(Line::from(format!("        {h}")));
            }
            for (what, text) in [("MTU", &l.mtu), ("ICMP", &l.icmp)] {
                if let Some(t) = text
                    && l.rule.is_some()
                {
                    lines.push(Line::from(format!("        {what}: {t}")));
                }
            }
        }
    };
    losses(None, &mut lines);
    for (i, h) in r.hops.iter().enumerate() {
        let c = &h.counts;
        lines.push(Line::from(format!(
            "  {:>2} {:<28} {:>9} pkts {:>11} bytes  frags {}+{}  max {}{}",
            i + 1,
            h.label(),
            c.packets,
            c.bytes,
            c.frags_first,
            c.frags_rest,
            c.max_len,
            if h.vxlan { "  vxlan" } else { "" }
        )));
        losses(Some(i), &mut lines);
    }
    for i in &r.incomplete {
        lines.push(Line::from(format!("  incomplete: {i}")));
    }
    for n in &r.notes {
        lines.push(Line::from(format!("  note: {n}")));
    }
    if let Some(i) = inner(&r.id) {
        lines.push(Line::from(format!("  inner {i}")));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

fn place(netns: &str, iface: Option<&str>) -> String {
    match iface {
        Some(i) => format!("{netns}/{i}"),
        None => netns.to_string(),
    }
}

fn drops_table(f: &mut Frame, area: Rect, s: &State) {
    let shown = s.shown_drops();
    if shown.is_empty() {
        return empty(f, area, "drops");
    }
    let rows: Vec<Row> = shown
        .iter()
        .map(|d| {
            let r: &DropRow = &d.row;
            let row = Row::new(vec![
                place(&r.netns, r.iface.as_deref()),
                packet(&r.id),
                r.reason.clone().unwrap_or_else(|| "-".into()),
                r.counts.packets.to_string(),
                human(d.rate),
                r.location.clone(),
                hint(r.reason.as_deref(), &r.location)
                    .unwrap_or("")
                    .to_string(),
            ]);
            dim(row, s, d)
        })
        .collect();
    let widths = [
        Constraint::Length(16),
        Constraint::Fill(2),
        Constraint::Length(16),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(22),
        Constraint::Fill(1),
    ];
    let header = Row::new([
        "WHERE", "FLOW", "REASON", "DROPS", "DROP/s", "LOCATION", "MEANING",
    ])
    .style(BOLD);
    let t = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(SELECTED);
    f.render_stateful_widget(t, area, &mut table_state(s, shown.len()));
}

fn verdicts_table(f: &mut Frame, area: Rect, s: &State) {
    let shown = s.shown_verdicts();
    if shown.is_empty() {
        return empty(f, area, "verdicts");
    }
    let rows: Vec<Row> = shown
        .iter()
        .map(|v| {
            let r: &VerdictRow = &v.row;
            let row = Row::new(vec![
                place(&r.netns, r.iface.as_deref()),
                format!("{} {} {}", r.family, r.table, r.hook),
                packet(&r.id),
                r.counts.accepted().to_string(),
                r.counts.dropped().to_string(),
                r.rule.clone().unwrap_or_default(),
            ]);
            dim(row, s, v)
        })
        .collect();
    let widths = [
        Constraint::Length(16),
        Constraint::Length(20),
        Constraint::Fill(2),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    let header = Row::new(["WHERE", "TABLE", "FLOW", "ACCEPTED", "DROPPED", "RULE"]).style(BOLD);
    let t = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(SELECTED);
    f.render_stateful_widget(t, area, &mut table_state(s, shown.len()));
}

const HELP: &[&str] = &[
    "q, Ctrl-C     quit (the totals are printed)",
    "1 2 3, Tab    paths, drops, verdicts",
    "up/down, j/k  select (PgUp/PgDn, Home/End)",
    "enter         hops of the selected path (esc: back)",
    "/             filter, e.g. inner udp port 53, vni 4097, netns c1",
    "s             sort: lost, rate, total, flow",
    "space         pause (reports are held, not lost)",
    "a             show IPv6 link-local and multicast rows",
    "",
    "Rows are cumulative since start; a row that stopped moving is dimmed.",
];

fn help(f: &mut Frame) {
    let area = f.area();
    let w = (HELP.iter().map(|l| l.len()).max().unwrap_or(0) as u16 + 4).min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, popup);
    let lines: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")),
        popup,
    );
}
