//! What the live view shows, apart from how: rows cumulative since start
//! with their current rate (sticky: a row that stops moving stays, dimmed),
//! paths recomputed from those rows, and the user's selection, sort,
//! filter and pause. Pure: tests feed it reports and keys.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tracer_ebpf::{FlowId, Tuple};

use crate::{
    analysis::paths::{self, PathRow, Rows},
    collectors::tally::Accumulate as _,
    filter::{Filter, FilterError},
    model::{Direction, Hook, IpFamily, Table},
    output::{DropRow, Endpoints, FlowRow, Health, IcmpRow, MtuRow, Report, Scope, VerdictRow},
    topology::links::Links,
};

/// Intervals a sparkline covers.
pub const HISTORY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Paths,
    Drops,
    Verdicts,
}

impl Tab {
    pub const ALL: [Tab; 3] = [Tab::Paths, Tab::Drops, Tab::Verdicts];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Paths => "Paths",
            Tab::Drops => "Drops",
            Tab::Verdicts => "Verdicts",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Most lost first (drops, dropped verdicts), then busiest.
    Lost,
    /// Busiest now (rate), then most in all.
    Rate,
    /// Most in all.
    Total,
    /// By flow: protocol, addresses, ports.
    Flow,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Sort::Lost => "lost",
            Sort::Rate => "rate",
            Sort::Total => "total",
            Sort::Flow => "flow",
        }
    }

    fn next(self) -> Sort {
        match self {
            Sort::Lost => Sort::Rate,
            Sort::Rate => Sort::Total,
            Sort::Total => Sort::Flow,
            Sort::Flow => Sort::Lost,
        }
    }
}

/// A cumulative row with its recent history.
#[derive(Debug, Clone)]
pub struct Sticky<R> {
    pub row: R,
    /// Per second, over the last interval.
    pub rate: f64,
    /// Packets (or drops) per interval, oldest first.
    pub history: VecDeque<u64>,
    /// The last interval it moved in.
    pub moved: u64,
}

impl<R> Sticky<R> {
    fn new(row: R) -> Self {
        Sticky {
            row,
            rate: 0.0,
            history: VecDeque::new(),
            moved: 0,
        }
    }

    fn record(&mut self, n: u64, secs: f64, tick: u64) {
        self.rate = n as f64 / secs;
        self.history.push_back(n);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        if n > 0 {
            self.moved = tick;
        }
    }
}

type FlowKey = (String, String, Direction, FlowId);
type DropKey = (String, Option<String>, FlowId, Option<String>, String);
type VerdictKey = (String, Option<String>, Hook, IpFamily, Table, FlowId);
type IcmpKey = (String, Option<String>, Direction, &'static str, FlowId);

/// Everything the view shows.
pub struct State {
    links: Links,
    /// Run time so far (sum of the intervals).
    pub elapsed: Duration,
    /// Intervals seen.
    pub tick: u64,
    flows: HashMap<FlowKey, FlowRow>,
    pub drops: Vec<Sticky<DropRow>>,
    drop_index: HashMap<DropKey, usize>,
    pub verdicts: Vec<Sticky<VerdictRow>>,
    verdict_index: HashMap<VerdictKey, usize>,
    icmps: HashMap<IcmpKey, IcmpRow>,
    mtu: Vec<MtuRow>,
    /// Cumulative paths, and each path's rate and history, by conversation.
    pub paths: Vec<Sticky<PathRow>>,
    path_history: HashMap<Tuple, Sticky<()>>,
    pub health: Health,
    pub tab: Tab,
    /// Selected row of each tab.
    pub selected: [usize; 3],
    /// Showing the hop-by-hop detail of the selected path.
    pub detail: bool,
    pub sort: Sort,
    pub filter: Option<Filter>,
    /// The filter being typed, and the error of the last try.
    pub editing: Option<(String, Option<FilterError>)>,
    pub paused: bool,
    /// Reports that came while paused, applied on resume.
    held: Vec<Report>,
    pub help: bool,
    /// Show IPv6 link-local and multicast noise.
    pub show_noise: bool,
    /// The latest one-line news (a new drop), and the interval it came in.
    pub status: Option<String>,
    status_tick: u64,
    pub quit: bool,
}

fn rate_secs(r: &Report) -> f64 {
    r.elapsed.as_secs_f64().max(1e-3)
}

impl State {
    /// How the traced devices connect now (devices and namespaces came or went).
    pub fn set_links(&mut self, links: Links) {
        self.links = links;
    }

    pub fn new(links: Links, filter: Option<Filter>) -> Self {
        State {
            links,
            elapsed: Duration::ZERO,
            tick: 0,
            flows: HashMap::new(),
            drops: Vec::new(),
            drop_index: HashMap::new(),
            verdicts: Vec::new(),
            verdict_index: HashMap::new(),
            icmps: HashMap::new(),
            mtu: Vec::new(),
            paths: Vec::new(),
            path_history: HashMap::new(),
            health: Health::default(),
            tab: Tab::Paths,
            selected: [0; 3],
            detail: false,
            sort: Sort::Lost,
            filter,
            editing: None,
            paused: false,
            held: Vec::new(),
            help: false,
            show_noise: false,
            status: None,
            status_tick: 0,
            quit: false,
        }
    }

    /// Takes in a report (held while paused).
    pub fn report(&mut self, r: Report) {
        if r.scope == Scope::First {
            // Counted again in the next interval: only news.
            if let Some(d) = r.drops.first() {
                self.status_tick = self.tick;
                self.status = Some(format!(
                    "new drop: {} in {}{}",
                    d.reason.as_deref().unwrap_or("?"),
                    d.netns,
                    d.iface
                        .as_deref()
                        .map(|i| format!("/{i}"))
                        .unwrap_or_default()
                ));
            }
            return;
        }
        if r.scope == Scope::Total {
            return;
        }
        if self.paused {
            self.held.push(r);
            return;
        }
        self.apply(&r);
    }

    fn apply(&mut self, r: &Report) {
        self.tick += 1;
        // News stays a few intervals; the drop itself stays in the rows.
        if self.tick > self.status_tick + 5 {
            self.status = None;
        }
        self.elapsed += r.elapsed;
        let (secs, tick) = (rate_secs(r), self.tick);
        add_health(&mut self.health, &r.health);
        for f in &r.flows {
            let key = (f.netns.to_string(), f.iface.to_string(), f.dir, f.id);
            self.flows
                .entry(key)
                .and_modify(|t| t.counts.add(&f.counts))
                .or_insert_with(|| f.clone());
        }
        for s in &mut self.drops {
            s.record(0, secs, tick);
        }
        for d in &r.drops {
            let key = (
                d.netns.clone(),
                d.iface.clone(),
                d.id,
                d.reason.clone(),
                d.location.clone(),
            );
            let i = *self.drop_index.entry(key).or_insert_with(|| {
                let mut s = Sticky::new(d.clone());
                s.row.counts = Default::default();
                self.drops.push(s);
                self.drops.len() - 1
            });
            let s = &mut self.drops[i];
            s.row.counts.add(&d.counts);
            s.history.pop_back();
            s.record(d.counts.packets, secs, tick);
        }
        for s in &mut self.verdicts {
            s.record(0, secs, tick);
        }
        for v in &r.verdicts {
            let key = (
                v.netns.clone(),
                v.iface.clone(),
                v.hook,
                v.family,
                v.table,
                v.id,
            );
            let i = *self.verdict_index.entry(key).or_insert_with(|| {
                let mut s = Sticky::new(v.clone());
                s.row.counts = Default::default();
                self.verdicts.push(s);
                self.verdicts.len() - 1
            });
            let s = &mut self.verdicts[i];
            s.row.counts.add(&v.counts);
            if v.rule.is_some() {
                s.row.rule.clone_from(&v.rule);
            }
            s.history.pop_back();
            s.record(v.counts.entered, secs, tick);
        }
        for i in &r.icmps {
            let key = (i.netns.clone(), i.iface.clone(), i.dir, i.kind, i.id);
            self.icmps
                .entry(key)
                .and_modify(|t| t.count += i.count)
                .or_insert_with(|| i.clone());
        }
        for m in &r.mtu {
            match self
                .mtu
                .iter_mut()
                .find(|x| x.finding.finding == m.finding.finding)
            {
                Some(x) => x.flows.clone_from(&m.flows),
                None => self.mtu.push(m.clone()),
            }
        }
        // The rate and history of each path come from the interval's paths.
        for h in self.path_history.values_mut() {
            h.record(0, secs, tick);
        }
        for p in &r.paths {
            let h = self
                .path_history
                .entry(p.id.outer)
                .or_insert_with(|| Sticky::new(()));
            h.history.pop_back();
            h.record(p.sent().max(p.lost_total()), secs, tick);
            h.rate = p.sent() as f64 / secs;
        }
        self.recompute_paths();
    }

    fn recompute_paths(&mut self) {
        let flows: Vec<FlowRow> = self.flows.values().cloned().collect();
        let drops: Vec<DropRow> = self.drops.iter().map(|s| s.row.clone()).collect();
        let verdicts: Vec<VerdictRow> = self.verdicts.iter().map(|s| s.row.clone()).collect();
        let icmps: Vec<IcmpRow> = self.icmps.values().cloned().collect();
        let rows = Rows {
            flows: &flows,
            drops: &drops,
            verdicts: &verdicts,
            icmps: &icmps,
            mtu: &self.mtu,
        };
        self.paths = paths::paths(&self.links, rows)
            .into_iter()
            .map(|p| {
                let h = self.path_history.get(&p.id.outer);
                Sticky {
                    rate: h.map_or(0.0, |h| h.rate),
                    history: h.map(|h| h.history.clone()).unwrap_or_default(),
                    moved: h.map_or(0, |h| h.moved),
                    row: p,
                }
            })
            .collect();
    }

    /// Moved in the last interval (else shown dimmed).
    pub fn live<R>(&self, s: &Sticky<R>) -> bool {
        s.moved == self.tick
    }

    fn noise(&self, id: &FlowId) -> bool {
        if self.show_noise {
            return false;
        }
        let t = paths::conversation(id);
        let e = Endpoints::of(&t);
        let link_local = |a: Option<IpAddr>| matches!(a, Some(IpAddr::V6(v)) if v.segments()[0] & 0xffc0 == 0xfe80);
        let multicast = |a: Option<IpAddr>| a.is_some_and(|a| a.is_multicast());
        link_local(e.src) || multicast(e.dst)
    }

    /// The paths shown: filtered, without noise, sorted.
    pub fn shown_paths(&self) -> Vec<&Sticky<PathRow>> {
        let mut v: Vec<&Sticky<PathRow>> = self
            .paths
            .iter()
            .filter(|p| !self.noise(&p.row.id))
            .filter(|p| self.filter.as_ref().is_none_or(|f| f.matches_path(&p.row)))
            .collect();
        let key = |p: &Sticky<PathRow>| (p.row.lost_total(), p.rate as u64, p.row.sent());
        match self.sort {
            Sort::Lost => v.sort_by_key(|p| std::cmp::Reverse(key(p))),
            Sort::Rate => v.sort_by(|a, b| {
                (b.rate, b.row.sent())
                    .partial_cmp(&(a.rate, a.row.sent()))
                    .unwrap_or(std::cmp::Ordering::Equal)
            }),
            Sort::Total => v.sort_by_key(|p| std::cmp::Reverse(p.row.sent())),
            Sort::Flow => v.sort_by_key(|p| p.row.id),
        }
        v
    }

    pub fn shown_drops(&self) -> Vec<&Sticky<DropRow>> {
        let mut v: Vec<&Sticky<DropRow>> = self
            .drops
            .iter()
            .filter(|d| !self.noise(&d.row.id))
            .filter(|d| {
                self.filter.as_ref().is_none_or(|f| {
                    f.matches(
                        &crate::filter::Facts::row(&d.row.id, &d.row.netns, d.row.iface.as_deref())
                            .with_reason(d.row.reason.as_deref()),
                    )
                })
            })
            .collect();
        self.sort_rows(&mut v, |d| d.row.counts.packets, |d| d.row.id);
        v
    }

    pub fn shown_verdicts(&self) -> Vec<&Sticky<VerdictRow>> {
        let mut v: Vec<&Sticky<VerdictRow>> = self
            .verdicts
            .iter()
            .filter(|s| !self.noise(&s.row.id))
            .filter(|s| {
                self.filter
                    .as_ref()
                    .is_none_or(|f| f.matches_row(&s.row.id, &s.row.netns, s.row.iface.as_deref()))
            })
            .collect();
        match self.sort {
            Sort::Lost => {
                v.sort_by_key(|s| std::cmp::Reverse((s.row.counts.dropped(), s.row.counts.entered)))
            }
            _ => self.sort_rows(&mut v, |s| s.row.counts.entered, |s| s.row.id),
        }
        v
    }

    fn sort_rows<R>(
        &self,
        v: &mut [&Sticky<R>],
        total: impl Fn(&Sticky<R>) -> u64,
        id: impl Fn(&Sticky<R>) -> FlowId,
    ) {
        match self.sort {
            Sort::Lost | Sort::Total => v.sort_by_key(|s| std::cmp::Reverse(total(s))),
            Sort::Rate => v.sort_by(|a, b| {
                (b.rate, total(b))
                    .partial_cmp(&(a.rate, total(a)))
                    .unwrap_or(std::cmp::Ordering::Equal)
            }),
            Sort::Flow => v.sort_by_key(|s| id(s)),
        }
    }

    /// Rows hidden as noise (IPv6 link-local and multicast), over all tabs.
    pub fn hidden_noise(&self) -> usize {
        if self.show_noise {
            return 0;
        }
        self.paths.iter().filter(|p| self.noise(&p.row.id)).count()
    }

    fn shown_len(&self) -> usize {
        match self.tab {
            Tab::Paths => self.shown_paths().len(),
            Tab::Drops => self.shown_drops().len(),
            Tab::Verdicts => self.shown_verdicts().len(),
        }
    }

    fn tab_index(&self) -> usize {
        Tab::ALL.iter().position(|t| *t == self.tab).unwrap_or(0)
    }

    /// The selected row of the current tab, kept within what is shown.
    pub fn selection(&self) -> usize {
        self.selected[self.tab_index()].min(self.shown_len().saturating_sub(1))
    }

    /// Handles a key; `quit` is set on q, Ctrl-C.
    pub fn key(&mut self, k: KeyEvent) {
        if k.kind == KeyEventKind::Release {
            return;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some((text, error)) = &mut self.editing {
            match k.code {
                KeyCode::Esc => self.editing = None,
                KeyCode::Enter if text.trim().is_empty() => {
                    self.filter = None;
                    self.editing = None;
                }
                KeyCode::Enter => match Filter::parse(text) {
                    Ok(f) => {
                        self.filter = Some(f);
                        self.editing = None;
                    }
                    Err(e) => *error = Some(e),
                },
                KeyCode::Backspace => {
                    text.pop();
                    *error = None;
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    *error = None;
                }
                _ => {}
            }
            return;
        }
        if self.help {
            self.help = false;
            if !matches!(k.code, KeyCode::Char('q')) {
                return;
            }
        }
        let i = self.tab_index();
        let len = self.shown_len();
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => self.help = true,
            KeyCode::Char(' ') | KeyCode::Char('p') => {
                self.paused = !self.paused;
                if !self.paused {
                    for r in std::mem::take(&mut self.held) {
                        self.apply(&r);
                    }
                }
            }
            KeyCode::Char('/') | KeyCode::Char('f') => {
                let text = self.filter.as_ref().map(|f| f.text().to_string());
                self.editing = Some((text.unwrap_or_default(), None));
            }
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('a') => self.show_noise = !self.show_noise,
            KeyCode::Char('1') => self.switch(Tab::Paths),
            KeyCode::Char('2') => self.switch(Tab::Drops),
            KeyCode::Char('3') => self.switch(Tab::Verdicts),
            KeyCode::Tab => self.switch(Tab::ALL[(i + 1) % Tab::ALL.len()]),
            KeyCode::BackTab => self.switch(Tab::ALL[(i + Tab::ALL.len() - 1) % Tab::ALL.len()]),
            KeyCode::Enter if self.tab == Tab::Paths && len > 0 => self.detail = !self.detail,
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => self.detail = false,
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected[i] = (self.selection() + 1).min(len.saturating_sub(1))
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected[i] = self.selection().saturating_sub(1)
            }
            KeyCode::PageDown => {
                self.selected[i] = (self.selection() + 10).min(len.saturating_sub(1))
            }
            KeyCode::PageUp => self.selected[i] = self.selection().saturating_sub(10),
            KeyCode::Home | KeyCode::Char('g') => self.selected[i] = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected[i] = len.saturating_sub(1),
            _ => {}
        }
    }

    fn switch(&mut self, tab: Tab) {
        self.tab = tab;
        self.detail = false;
    }

    /// Reports held while paused.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

fn add_health(h: &mut Health, o: &Health) {
    h.flow_map_full += o.flow_map_full;
    h.drop_map_full += o.drop_map_full;
    h.drop_events_lost += o.drop_events_lost;
    h.verdict_map_full += o.verdict_map_full;
    h.icmp_map_full += o.icmp_map_full;
    h.device_map_full += o.device_map_full;
    h.frag_unmatched += o.frag_unmatched;
    h.explain_events_lost += o.explain_events_lost;
    h.capture_rate_limited += o.capture_rate_limited;
    h.capture_lost += o.capture_lost;
    h.attach_failed += o.attach_failed;
    h.totals_full += o.totals_full;
}
