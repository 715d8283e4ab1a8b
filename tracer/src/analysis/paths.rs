//! Paths: the per-hop flow rows of one conversation (the container's flow,
//! and the VXLAN packets that carry it, by VNI and inner flow) put in the
//! order its packets cross them, with how many went missing between two
//! hops and why, from the drop, verdict, ICMP and MTU rows of that place.
//!
//! A path is one direction of travel: a reply is a path of its own. Hops
//! are ordered by the topology ([`Links`]): a veth's egress is followed by
//! its peer's ingress, a bridge port's ingress by another port's egress, a
//! VXLAN device's egress by its underlay's (encapsulated), an underlay's
//! encapsulated ingress by the VXLAN device that decapsulates it, and within
//! a namespace an ingress by an egress. Where the topology cannot say (a
//! device or namespace that is not traced), the path says so in
//! `incomplete` rather than guess.

use std::{fmt, rc::Rc};

// Grouped by conversation on every report, tens of thousands of rows: FxHash.
use rustc_hash::FxHashMap as HashMap;
// A path's working lists hold a handful of hops: on the stack, not a
// dozen allocations per path for tens of thousands of paths a second.
use smallvec::SmallVec;

/// A list of about as many items as a path has hops.
type Few<T> = SmallVec<[T; 8]>;
/// A list of big items per place or run of a path: inline for a path of a
/// couple of hops only, as every move copies the whole inline array (eight
/// places were a kilobyte copied several times per path).
type FewBig<T> = SmallVec<[T; 3]>;

use tracer_ebpf::{FlowId, TUPLE_PORTS, Tuple};

use crate::{
    collectors::{
        drops::reasons::hint,
        flows::{Counts, id_order},
        tally::Accumulate as _,
    },
    model::{Direction, Hook},
    output::{DropRow, FlowRow, IcmpRow, MtuRow, VerdictRow, vni},
    topology::links::{LinkKind, Links},
};

/// One conversation along its hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRow {
    /// The conversation: `outer` is the container's packet, `vni` the VNI it
    /// crossed the overlay with (if it did); `inner` is unused.
    pub id: FlowId,
    /// In the order the packets cross them.
    pub hops: Vec<Hop>,
    /// Where packets went missing, in path order.
    pub lost: Vec<Lost>,
    /// Why the path may not be whole: parts of it are not traced.
    pub incomplete: Vec<String>,
    /// MTU findings and ICMP errors about this flow where nothing was lost.
    pub notes: Vec<String>,
    /// The outer headers of the VXLAN packets that carried it (for filters).
    pub carriers: Vec<Tuple>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub netns: Rc<str>,
    pub iface: Rc<str>,
    pub dir: Direction,
    /// Seen encapsulated (the VXLAN packet carrying the flow).
    pub vxlan: bool,
    pub counts: Counts,
}

impl Hop {
    /// `hb/ul0 in`
    pub fn label(&self) -> String {
        self.label_text().to_string()
    }

    /// The label, written where it is displayed (text rows print it per hop).
    pub fn label_text(&self) -> impl fmt::Display + '_ {
        let dir = match self.dir {
            Direction::Ingress => "in",
            Direction::Egress => "out",
            Direction::Sent => "sent",
        };
        fmt::from_fn(move |f| write!(f, "{}/{} {dir}", self.netns, self.iface))
    }
}

/// Packets of a path that went missing at one place, for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lost {
    /// Index of the last hop they passed; `None`: before the first.
    pub after: Option<usize>,
    /// Where they were dropped, or the last hop's namespace if not seen dropped.
    pub netns: String,
    pub iface: Option<String>,
    pub count: u64,
    /// The kernel's drop reason; `None` when no drop was seen for them.
    pub reason: Option<String>,
    pub location: Option<String>,
    /// The netfilter hook and rule that dropped them, when a verdict says.
    pub hook: Option<Hook>,
    pub rule: Option<String>,
    /// An MTU finding that bites here.
    pub mtu: Option<String>,
    /// ICMP errors sent about the flow here (e.g. fragmentation needed).
    pub icmp: Option<String>,
}

impl Lost {
    /// The drop reason in plain words.
    pub fn hint(&self) -> Option<&'static str> {
        hint(
            self.reason.as_deref(),
            self.location.as_deref().unwrap_or(""),
        )
    }
}

impl PathRow {
    /// Packets at the first hop.
    pub fn sent(&self) -> u64 {
        self.hops.first().map_or(0, |h| h.counts.packets)
    }

    /// Packets at the last hop less those lost after it.
    pub fn arrived(&self) -> u64 {
        let Some(last) = self.hops.last() else {
            return 0;
        };
        let after_last: u64 = self
            .lost
            .iter()
            .filter(|l| l.after == Some(self.hops.len() - 1))
            .map(|l| l.count)
            .sum();
        last.counts.packets.saturating_sub(after_last)
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.iter().map(|l| l.count).sum()
    }

    /// Where the path starts: (netns, iface, dir) of its first hop, else of
    /// its first loss.
    pub fn origin(&self) -> (&str, Option<&str>, Option<Direction>) {
        match (self.hops.first(), self.lost.first()) {
            (Some(h), _) => (&h.netns, Some(&h.iface), Some(h.dir)),
            (None, Some(l)) => (&l.netns, l.iface.as_deref(), None),
            (None, None) => ("", None, None),
        }
    }

    /// Where a loss happened, in words: `after hb/ul0 in` or `before c1/eth0 out`.
    pub fn place(&self, l: &Lost) -> String {
        self.place_text(l).to_string()
    }

    /// The place, written where it is displayed.
    pub fn place_text<'a>(&'a self, l: &'a Lost) -> impl fmt::Display + 'a {
        fmt::from_fn(move |f| match (l.after, self.hops.first()) {
            (Some(i), _) => write!(f, "after {}", self.hops[i].label_text()),
            (None, Some(first)) => write!(f, "before {}", first.label_text()),
            (None, None) => write!(f, "in {}", l.netns),
        })
    }
}

/// The rows a path is made of.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub flows: &'a [FlowRow],
    pub drops: &'a [DropRow],
    pub verdicts: &'a [VerdictRow],
    pub icmps: &'a [IcmpRow],
    pub mtu: &'a [MtuRow],
}

impl<'a> Rows<'a> {
    pub fn of(r: &'a crate::output::Report) -> Self {
        Rows {
            flows: &r.flows,
            drops: &r.drops,
            verdicts: &r.verdicts,
            icmps: &r.icmps,
            mtu: &r.mtu,
        }
    }
}

/// The conversation a packet belongs to: the flow a VXLAN packet carries,
/// else its own.
pub fn conversation(id: &FlowId) -> Tuple {
    if id.inner.family != 0 {
        id.inner
    } else {
        id.outer
    }
}

/// What is known about one conversation while its path is built. Its
/// flow rows are listed apart (see [`paths`]): a list per conversation
/// would be an allocation per path every report.
#[derive(Default)]
struct Group<'a> {
    vni: u32,
    carriers: Vec<Tuple>,
    drops: Vec<&'a DropRow>,
    verdicts: Vec<&'a VerdictRow>,
    icmps: Vec<&'a IcmpRow>,
    /// (netns, iface, dir, finding) of MTU findings its rows hit.
    mtu: Vec<(&'a str, &'a str, Direction, &'a str)>,
}

/// The paths of every conversation of `rows`, busiest first.
pub fn paths(links: &Links, rows: Rows) -> Vec<PathRow> {
    // Sized first: grown as it fills, the list is copied a few times, and
    // the index hashed again. Most conversations cross two hops or more.
    let mut groups = Groups::with_capacity(rows.flows.len() / 2);
    // The group of each flow row (u32::MAX: none), then the rows of each
    // group side by side in one list: where a group's rows start in it is
    // the sum of the counts of the groups before it.
    let mut of: Vec<u32> = Vec::with_capacity(rows.flows.len());
    let mut start: Vec<u32> = Vec::new();
    for f in rows.flows {
        let key = conversation(&f.id);
        if key.family == 0 {
            of.push(u32::MAX);
            continue;
        }
        let (i, g) = groups.entry(key);
        let vxlan = f.id.inner.family != 0;
        if vxlan && g.vni == 0 {
            g.vni = f.id.vni;
        }
        if vxlan && !g.carriers.contains(&f.id.outer) {
            g.carriers.push(f.id.outer);
        }
        if i == start.len() {
            start.push(0);
        }
        start[i] += 1;
        of.push(i as u32);
    }
    let mut at = 0;
    for s in &mut start {
        (*s, at) = (at, at + *s);
    }
    let mut members = vec![0u32; at as usize];
    let mut next = start.clone();
    for (row, &g) in of.iter().enumerate() {
        if let Some(n) = next.get_mut(g as usize) {
            members[*n as usize] = row as u32;
            *n += 1;
        }
    }
    start.push(at);
    for d in rows.drops {
        let key = conversation(&d.id);
        if key.family != 0 {
            let (_, g) = groups.entry(key);
            if g.vni == 0 {
                g.vni = d.id.vni;
            }
            g.drops.push(d);
        }
    }
    for v in rows.verdicts.iter().filter(|v| v.counts.dropped() > 0) {
        let key = conversation(&v.id);
        if key.family != 0 {
            groups.entry(key).1.verdicts.push(v);
        }
    }
    for i in rows.icmps {
        if let Some(g) = groups.get_mut(&conversation(&i.id)) {
            g.icmps.push(i);
        }
    }
    for m in rows.mtu {
        for f in &m.flows {
            if let Some(g) = groups.get_mut(&conversation(&f.id)) {
                g.mtu
                    .push((&f.netns, &f.iface, f.dir, m.finding.finding.as_str()));
            }
        }
    }
    let mut nexts = Nexts::default();
    // Sized first: grown as it fills, it would copy every path row a few times.
    let mut out: Vec<PathRow> = Vec::with_capacity(groups.list.len());
    for (i, (key, g)) in groups.list.into_iter().enumerate() {
        // Groups made after the flow rows (by drops, verdicts) have none.
        let flows = match (start.get(i), start.get(i + 1)) {
            (Some(&a), Some(&b)) => &members[a as usize..b as usize],
            _ => &[],
        };
        let hops = merged(rows.flows, flows);
        if !hops.is_empty() || !g.drops.is_empty() || !g.verdicts.is_empty() {
            out.push(build(links, &mut nexts, key, g, &hops));
        }
    }
    // Ids are unique (one path per conversation), so unstable is stable here.
    out.sort_unstable_by(|a, b| b.sent().cmp(&a.sent()).then_with(|| id_order(&a.id, &b.id)));
    out
}

/// The groups by conversation, in a list: a map of them would move every
/// `Group` as it grows (tens of thousands every report).
#[derive(Default)]
struct Groups<'a> {
    index: HashMap<Tuple, usize>,
    list: Vec<(Tuple, Group<'a>)>,
}

impl<'a> Groups<'a> {
    fn with_capacity(n: usize) -> Self {
        Groups {
            index: HashMap::with_capacity_and_hasher(n, Default::default()),
            list: Vec::with_capacity(n),
        }
    }

    /// The group of `key` and its index in the list, made if new.
    fn entry(&mut self, key: Tuple) -> (usize, &mut Group<'a>) {
        let i = *self.index.entry(key).or_insert_with(|| {
            self.list.push((key, Group::default()));
            self.list.len() - 1
        });
        (i, &mut self.list[i].1)
    }

    fn get_mut(&mut self, key: &Tuple) -> Option<&mut Group<'a>> {
        let i = *self.index.get(key)?;
        Some(&mut self.list[i].1)
    }
}

/// The hops of one conversation from its flow rows (indexes into `flows`),
/// merged per (netns, iface, dir, encapsulated), with the VXLAN UDP port of
/// encapsulated ones.
fn merged(flows: &[FlowRow], rows: &[u32]) -> FewBig<(Hop, Option<u16>)> {
    let mut hops = FewBig::new();
    for &r in rows {
        let f = &flows[r as usize];
        let vxlan = f.id.inner.family != 0;
        let port = (vxlan && f.id.outer.flags & TUPLE_PORTS != 0).then_some(f.id.outer.dport);
        match hops.iter_mut().find(|(h, _): &&mut (Hop, _)| {
            h.netns == f.netns && h.iface == f.iface && h.dir == f.dir && h.vxlan == vxlan
        }) {
            Some((h, _)) => h.counts.add(&f.counts),
            None => hops.push((
                Hop {
                    netns: f.netns.clone(),
                    iface: f.iface.clone(),
                    dir: f.dir,
                    vxlan,
                    counts: f.counts,
                },
                port,
            )),
        }
    }
    hops
}

/// [`next`] of each distinct hop of one report: tens of thousands of paths
/// cross a handful of devices. Keyed by the addresses of the hop's shared
/// names (alive while the report's rows are), so a lookup compares no text.
#[derive(Default)]
struct Nexts {
    known: HashMap<NextOf, Rc<Next>>,
}

/// (netns and iface addresses, dir, vxlan, port, vni): what [`next`] is of.
type NextOf = (usize, usize, Direction, bool, Option<u16>, Option<u32>);

impl Nexts {
    fn get(&mut self, links: &Links, h: &Hop, port: Option<u16>, vni: Option<u32>) -> Rc<Next> {
        let key = (
            Rc::as_ptr(&h.netns).cast::<u8>() as usize,
            Rc::as_ptr(&h.iface).cast::<u8>() as usize,
            h.dir,
            h.vxlan,
            port,
            vni,
        );
        self.known
            .entry(key)
            .or_insert_with(|| Rc::new(next(links, h, port, vni)))
            .clone()
    }
}

/// What follows a hop, by the topology.
#[derive(Debug, PartialEq)]
enum Next {
    /// This hop, which is traced: packets not seen there were lost.
    Hop(String, String, Direction, bool),
    /// One of these, whichever was seen (a bridge, a router).
    AnyOf(Vec<(String, String, Direction, bool)>),
    /// Any egress of this namespace but the hop's own device (routing).
    Routed,
    /// Beyond what is traced, and why.
    Untraced(String),
}

fn next(links: &Links, h: &Hop, port: Option<u16>, vni: Option<u32>) -> Next {
    let (ns, dev) = (&*h.netns, &*h.iface);
    let Some(link) = links.get(ns, dev) else {
        return Next::Routed;
    };
    let hop = |n: &str, d: &str, dir, vxlan| -> Next {
        match links.get(n, d) {
            Some(l) if l.hooked => Next::Hop(n.into(), d.into(), dir, vxlan),
            _ => Next::Untraced(format!("{d} in {n} is not traced")),
        }
    };
    match h.dir {
        Direction::Egress => match (&link.kind, &link.vxlan, &link.peer) {
            (LinkKind::Vxlan, Some(v), _) if !h.vxlan => match &v.underlay {
                Ok((n, d)) => hop(n, d, Direction::Egress, true),
                Err(why) => Next::Untraced(why.clone()),
            },
            (LinkKind::Veth, _, Some(Ok((n, d)))) => hop(n, d, Direction::Ingress, h.vxlan),
            (LinkKind::Veth, _, Some(Err(why))) => Next::Untraced(why.clone()),
            (LinkKind::Bridge, _, _) => Next::AnyOf(
                links
                    .ports(ns, dev)
                    .map(|p| (ns.to_string(), p.to_string(), Direction::Egress, h.vxlan))
                    .collect(),
            ),
            _ => Next::Untraced(format!("it leaves by {dev} in {ns}")),
        },
        Direction::Ingress => {
            if h.vxlan {
                let vx = links.vxlans_over(ns, dev, port, vni);
                if !vx.is_empty() {
                    let hooked: Vec<_> = vx
                        .iter()
                        .filter(|(n, d)| links.get(n, d).is_some_and(|l| l.hooked))
                        .collect();
                    return match hooked.as_slice() {
                        [] => Next::Untraced(format!("{} in {} is not traced", vx[0].1, vx[0].0)),
                        [(n, d)] => Next::Hop(n.clone(), d.clone(), Direction::Ingress, false),
                        many => Next::AnyOf(
                            many.iter()
                                .map(|(n, d)| (n.clone(), d.clone(), Direction::Ingress, false))
                                .collect(),
                        ),
                    };
                }
            }
            match &link.master {
                Some(bridge) => {
                    let mut any: Vec<_> = links
                        .ports(ns, bridge)
                        .filter(|p| *p != dev)
                        .map(|p| (ns.to_string(), p.to_string(), Direction::Egress, h.vxlan))
                        .collect();
                    any.push((ns.into(), bridge.clone(), Direction::Ingress, h.vxlan));
                    Next::AnyOf(any)
                }
                None => Next::Routed,
            }
        }
        Direction::Sent => Next::Routed,
    }
}

/// How a run of hops ended.
enum End {
    /// Delivered, or lost where no traced hop was expected.
    Stop,
    /// A traced hop was expected next and saw none of them.
    Vanished(String),
    Untraced(String),
}

fn build(
    links: &Links,
    nexts: &mut Nexts,
    key: Tuple,
    g: Group,
    merged: &[(Hop, Option<u16>)],
) -> PathRow {
    let vni_id = FlowId {
        vni: g.vni,
        ..FlowId::default()
    };
    let vni = vni(&vni_id);
    let (order, ends) = order(links, nexts, merged, vni);
    let hops: Vec<Hop> = order.iter().map(|&i| merged[i].0.clone()).collect();
    let mut incomplete = Vec::new();
    if let Some(first) = hops.first()
        && first.dir == Direction::Ingress
    {
        incomplete.push(format!(
            "it is first seen arriving at {}: where it came from was not seen",
            first.label()
        ));
    }
    // What is missing after each hop, from the counts.
    let mut missing: Few<u64> = hops
        .windows(2)
        .map(|w| w[0].counts.packets.saturating_sub(w[1].counts.packets))
        .collect();
    missing.push(0);
    let mut vanished = None;
    for (pos, end) in &ends {
        let last = &hops[*pos];
        match end {
            End::Stop => {}
            End::Vanished(expected) if *pos == hops.len() - 1 => {
                missing[*pos] = last.counts.packets;
                vanished = Some(expected.clone());
            }
            End::Vanished(expected) => incomplete.push(format!(
                "after {} none were seen at {expected}, yet it shows again at {}",
                last.label(),
                hops[pos + 1].label()
            )),
            End::Untraced(why) => incomplete.push(format!("after {}: {why}", last.label())),
        }
    }
    let place = |ns: &str, iface: Option<&str>| -> Option<usize> {
        if let Some(i) = iface
            && let Some(p) = hops.iter().rposition(|h| &*h.netns == ns && &*h.iface == i)
        {
            return Some(p);
        }
        let first = hops.first()?;
        if &*first.netns == ns && first.dir == Direction::Egress {
            return None;
        }
        hops.iter()
            .position(|h| &*h.netns == ns)
            .or(Some(hops.len() - 1))
    };
    // Everything said about each place: Before the first hop is key 0, after hop i is i + 1.
    let slot = |p: Option<usize>| p.map_or(0, |i| i + 1);
    // Most paths have nothing to place (no drop, verdict, ICMP or MTU
    // finding): then every place is the empty one, and none is made.
    let quiet =
        g.drops.is_empty() && g.verdicts.is_empty() && g.icmps.is_empty() && g.mtu.is_empty();
    let mut at: FewBig<Place> = if quiet {
        FewBig::new()
    } else {
        (0..=hops.len()).map(|_| Place::default()).collect()
    };
    for d in &g.drops {
        let p = &mut at[slot(place(&d.netns, d.iface.as_deref()))];
        p.netns.get_or_insert_with(|| d.netns.clone());
        match p
            .drops
            .iter_mut()
            .find(|(r, l, i, _)| *r == d.reason && *l == d.location && *i == d.iface)
        {
            Some(e) => e.3 += d.counts.packets,
            None => p.drops.push((
                d.reason.clone(),
                d.location.clone(),
                d.iface.clone(),
                d.counts.packets,
            )),
        }
    }
    for v in &g.verdicts {
        let p = &mut at[slot(place(&v.netns, v.iface.as_deref()))];
        p.netns.get_or_insert_with(|| v.netns.clone());
        p.verdicts
            .push((v.hook, v.rule.clone(), v.counts.dropped(), v.iface.clone()));
    }
    // An ICMP error travels back along the path and shows at every hop it
    // passes: it belongs where it was sent, the furthest place along the path.
    let mut icmps: Vec<(usize, &IcmpRow)> = Vec::new();
    for i in &g.icmps {
        let s = slot(place(&i.netns, i.iface.as_deref()));
        match icmps
            .iter_mut()
            .find(|(_, x)| x.kind == i.kind && x.mtu == i.mtu)
        {
            Some(e) if e.0 < s => *e = (s, i),
            Some(_) => {}
            None => icmps.push((s, i)),
        }
    }
    for (s, i) in icmps {
        let mtu = i.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        at[s]
            .notes_icmp
            .push(format!("{}{mtu} x{}", i.kind, i.count));
    }
    for (ns, iface, dir, finding) in &g.mtu {
        if let Some(i) = hops
            .iter()
            .position(|h| &*h.netns == *ns && &*h.iface == *iface && h.dir == *dir)
            && !at[i + 1].notes_mtu.iter().any(|f| f == finding)
        {
            at[i + 1].notes_mtu.push(finding.to_string());
        }
    }
    let mut lost = Vec::new();
    let mut notes = Vec::new();
    let empty = Place::default();
    for s in 0..=hops.len() {
        let p = at.get(s).unwrap_or(&empty);
        let after = s.checked_sub(1);
        // Made into Strings only for a loss: most places have none.
        let (ns, iface): (&str, Option<&str>) = match after {
            Some(i) => (&hops[i].netns, Some(&hops[i].iface)),
            None => ("", None),
        };
        let ns = p.netns.as_deref().unwrap_or(ns);
        let iface = || iface.map(String::from);
        let first = lost.len();
        let nf = p
            .verdicts
            .iter()
            .find(|(_, r, _, _)| r.is_some())
            .or(p.verdicts.first());
        let mut explained = 0;
        for (reason, location, diface, n) in &p.drops {
            let netfilter = reason.as_deref().is_none_or(|r| r.contains("NETFILTER"));
            explained += n;
            lost.push(Lost {
                after,
                netns: ns.to_string(),
                iface: diface.clone().or_else(iface),
                count: *n,
                reason: reason.clone(),
                location: Some(location.clone()),
                hook: nf.filter(|_| netfilter).map(|v| v.0),
                rule: nf.filter(|_| netfilter).and_then(|v| v.1.clone()),
                mtu: None,
                icmp: None,
            });
        }
        if p.drops.is_empty()
            && let Some((hook, rule, _, viface)) = nf
        {
            // Drops not traced (--no-drops): the verdicts say how many.
            let n: u64 = p.verdicts.iter().map(|v| v.2).sum();
            explained += n;
            lost.push(Lost {
                after,
                netns: ns.to_string(),
                iface: viface.clone().or_else(iface),
                count: n,
                reason: None,
                location: None,
                hook: Some(*hook),
                rule: rule.clone(),
                mtu: None,
                icmp: None,
            });
        }
        let gone = after.map_or(0, |i| missing[i]);
        if gone > explained {
            lost.push(Lost {
                after,
                netns: ns.to_string(),
                iface: iface(),
                count: gone - explained,
                ..Lost::default()
            });
        }
        let mtu = (!p.notes_mtu.is_empty()).then(|| p.notes_mtu.join("; "));
        let icmp = (!p.notes_icmp.is_empty()).then(|| p.notes_icmp.join(", "));
        match lost.get_mut(first) {
            Some(l) => {
                l.mtu = mtu;
                l.icmp = icmp;
            }
            // Named only when there is a note: most places have none.
            None if mtu.is_some() || icmp.is_some() => {
                let here = match after {
                    Some(i) => format!("after {}", hops[i].label()),
                    None => "before the first hop".to_string(),
                };
                notes.extend(mtu.map(|m| format!("{here}: MTU: {m}")));
                notes.extend(icmp.map(|i| format!("{here}: ICMP {i}")));
            }
            None => {}
        }
    }
    if let Some(expected) = vanished {
        notes.push(format!(
            "none of what passed {} was seen at {expected}",
            hops[hops.len() - 1].label()
        ));
    }
    PathRow {
        id: FlowId {
            outer: key,
            vni: g.vni,
            ..FlowId::default()
        },
        hops,
        lost,
        incomplete,
        notes,
        carriers: g.carriers,
    }
}

#[derive(Default)]
struct Place {
    netns: Option<String>,
    /// (reason, location, iface, packets)
    drops: Vec<(Option<String>, String, Option<String>, u64)>,
    /// (hook, rule, dropped, iface)
    verdicts: Vec<(Hook, Option<String>, u64, Option<String>)>,
    notes_mtu: Vec<String>,
    notes_icmp: Vec<String>,
}

/// The hops in path order (indexes into `hops`), and after which of the
/// ordered hops a run ended and how.
fn order(
    links: &Links,
    known: &mut Nexts,
    hops: &[(Hop, Option<u16>)],
    vni: Option<u32>,
) -> (Few<usize>, FewBig<(usize, End)>) {
    let nexts: Few<Rc<Next>> = hops
        .iter()
        .map(|(h, p)| known.get(links, h, *p, vni))
        .collect();
    let is = |j: usize, n: &str, d: &str, dir: Direction, vx: bool| {
        let h = &hops[j].0;
        &*h.netns == n && &*h.iface == d && h.dir == dir && h.vxlan == vx
    };
    // Candidates for what follows hop i, among the hops seen.
    let follows = |i: usize, j: usize| -> bool {
        if i == j {
            return false;
        }
        match &*nexts[i] {
            Next::Hop(n, d, dir, vx) => is(j, n, d, *dir, *vx),
            Next::AnyOf(any) => any.iter().any(|(n, d, dir, vx)| is(j, n, d, *dir, *vx)),
            Next::Routed => {
                let (a, b) = (&hops[i].0, &hops[j].0);
                a.netns == b.netns && b.dir == Direction::Egress && a.iface != b.iface
            }
            Next::Untraced(_) => false,
        }
    };
    let n = hops.len();
    let mut used: Few<bool> = smallvec::smallvec![false; n];
    let mut order = Few::new();
    let mut ends = FewBig::new();
    let busiest = |c: &mut dyn Iterator<Item = usize>| {
        c.max_by(|&a, &b| {
            hops[a]
                .0
                .counts
                .packets
                .cmp(&hops[b].0.counts.packets)
                .then(b.cmp(&a))
        })
    };
    while order.len() < n {
        // A run starts at a hop nothing unused leads to (egress before
        // ingress on a tie: a packet leaves before it arrives).
        let free: Few<usize> = (0..n).filter(|&j| !used[j]).collect();
        let starts: Few<usize> = free
            .iter()
            .copied()
            .filter(|&j| !free.iter().any(|&i| follows(i, j)))
            .collect();
        let pool = if starts.is_empty() { &free } else { &starts };
        let egress: Few<usize> = pool
            .iter()
            .copied()
            .filter(|&j| hops[j].0.dir == Direction::Egress)
            .collect();
        let pool = if egress.is_empty() { pool } else { &egress };
        let mut cur = busiest(&mut pool.iter().copied()).expect("a hop is left");
        loop {
            used[cur] = true;
            order.push(cur);
            let cand = busiest(&mut (0..n).filter(|&j| !used[j] && follows(cur, j)));
            match cand {
                Some(j) => cur = j,
                None => {
                    let end = match &*nexts[cur] {
                        Next::Hop(n, d, dir, _) => End::Vanished(format!(
                            "{n}/{d} {}",
                            if *dir == Direction::Ingress {
                                "in"
                            } else {
                                "out"
                            }
                        )),
                        Next::Untraced(why) => End::Untraced(why.clone()),
                        _ => End::Stop,
                    };
                    ends.push((order.len() - 1, end));
                    break;
                }
            }
        }
    }
    (order, ends)
}

#[cfg(test)]
mod tests;
