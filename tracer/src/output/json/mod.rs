//! JSON lines: one object per row, the contract scripts and tests rely on
//! (documented in the README).

use std::{
    hash::{Hash, Hasher},
    io::{self, Write},
    net::IpAddr,
    rc::Rc,
};

use serde::Serialize;
use tracer_ebpf::FlowId;

use super::{
    Chunked, DropRow, Endpoints, FlowRow, FragRow, IcmpRow, MtuRow, PathRow, Proto, Report,
    RuleRow, Scope, Sink, VerdictRow, inner, vni,
};
use crate::topology::mtu::Dev;
use crate::{
    collectors::drops::reasons::hint,
    model::{Direction, Hook},
    rules::Family,
};

pub struct JsonSink<W: Write> {
    out: Chunked<W>,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Chunked::new(out),
        }
    }

    fn line(&mut self, row: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out.buf, row)?;
        self.out.buf.push(b'\n');
        self.out.spill()
    }
}

/// Addresses serialize as strings with no allocation (serde formats an
/// `IpAddr` on the stack): rows are written tens of thousands a second.
#[derive(Serialize)]
struct JsonEndpoints {
    proto: JsonProto,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
}

/// A protocol's name where it has one, else its number.
struct JsonProto(Proto);

impl Serialize for JsonProto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Proto::Named(n) => s.serialize_str(n),
            Proto::Number(n) => s.serialize_u8(n),
        }
    }
}

impl From<Endpoints> for JsonEndpoints {
    fn from(e: Endpoints) -> Self {
        JsonEndpoints {
            proto: JsonProto(e.proto),
            src: e.src,
            dst: e.dst,
            sport: e.sport,
            dport: e.dport,
        }
    }
}

/// Where rows are written: the report's scope, and the inodes of the
/// namespaces its rows name.
struct At<'a> {
    scope: Scope,
    inodes: &'a [(String, u64)],
    nat: &'a crate::analysis::nat::Ties,
}

impl At<'_> {
    fn of(r: &Report) -> At<'_> {
        At {
            scope: r.scope,
            inodes: &r.netns_inodes,
            nat: &r.nat,
        }
    }

    /// The inode of the namespace named `netns` (an unnamed one is named by it).
    fn inode(&self, netns: &str) -> Option<u64> {
        self.inodes
            .iter()
            .find(|(n, _)| n == netns)
            .map(|(_, i)| *i)
            .or_else(|| netns.parse().ok())
    }
}

/// The fields every row about a packet carries.
#[derive(Serialize)]
struct JsonFlowFields<'a> {
    r#type: &'static str,
    scope: &'static str,
    netns: &'a str,
    netns_inode: Option<u64>,
    iface: Option<&'a str>,
    dir: Option<&'static str>,
    #[serde(flatten)]
    outer: JsonEndpoints,
    vni: Option<u32>,
    inner: Option<JsonEndpoints>,
    /// After a destination NAT: the address and port the client used.
    orig: Option<String>,
}

fn flow_fields<'a>(
    r#type: &'static str,
    at: &At,
    netns: &'a str,
    iface: Option<&'a str>,
    dir: Option<&'static str>,
    id: &FlowId,
) -> JsonFlowFields<'a> {
    JsonFlowFields {
        r#type,
        scope: at.scope.as_str(),
        netns,
        netns_inode: at.inode(netns),
        iface,
        dir,
        outer: Endpoints::of(&id.outer).into(),
        vni: vni(id),
        inner: inner(id).map(Into::into),
        orig: crate::analysis::nat::orig(at.nat, id).map(|a| a.to_string()),
    }
}

/// The flow row through serde: the reference [`write_flow`] is held to.
#[cfg(test)]
#[derive(Serialize)]
struct JsonFlow<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    packets: u64,
    bytes: u64,
    frags_first: u64,
    frags_rest: u64,
    df: u64,
    max_len: u32,
}

#[derive(Serialize)]
struct JsonDrop<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    reason: Option<&'a str>,
    location: &'a str,
    fragment: Option<&'static str>,
    count: u64,
    bytes: u64,
    hint: Option<&'static str>,
}

#[derive(Serialize)]
struct JsonIcmp<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    kind: &'static str,
    icmp_type: u8,
    icmp_code: u8,
    mtu: Option<u32>,
    count: u64,
}

#[derive(Serialize)]
struct JsonFrag<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    datagrams: u64,
    reassembled: u64,
    datagrams_lost: u64,
    fragments: u64,
    fragments_lost: u64,
    reassembly_failed: u64,
}

#[derive(Serialize)]
struct JsonVerdict<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    hook: &'static str,
    family: &'static str,
    table: &'static str,
    accepted: u64,
    dropped: u64,
    rule: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonMtuFlow<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    max_len: u32,
    packets: u64,
}

#[derive(Serialize)]
struct JsonMtu<'a> {
    r#type: &'static str,
    scope: &'static str,
    kind: &'static str,
    devices: &'a [Dev],
    overhead: Option<u32>,
    limit: u32,
    finding: &'a str,
    flows: Vec<JsonMtuFlow<'a>>,
}

#[derive(Serialize)]
struct JsonRule<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    family: &'static str,
    table: &'a str,
    chain: &'a str,
    hook: Option<&'static str>,
    handle: Option<u64>,
    rule: Option<&'a str>,
    verdict: &'static str,
    count: u64,
}

#[derive(Serialize)]
struct JsonBenign {
    r#type: &'static str,
    scope: &'static str,
    drops: u64,
    echo_replies: u64,
    empty_queue_purges: u64,
    ipv6_link_local: u64,
    rows_hidden: u64,
    hint: &'static str,
}

#[cfg(test)]
#[derive(Serialize)]
struct JsonHop<'a> {
    netns: &'a str,
    netns_inode: Option<u64>,
    iface: &'a str,
    dir: &'static str,
    vxlan: bool,
    packets: u64,
    bytes: u64,
    frags_first: u64,
    frags_rest: u64,
    max_len: u32,
}

#[cfg(test)]
#[derive(Serialize)]
struct JsonLost<'a> {
    after: Option<usize>,
    netns: &'a str,
    iface: Option<&'a str>,
    count: u64,
    reason: Option<&'a str>,
    location: Option<&'a str>,
    hook: Option<&'static str>,
    rule: Option<&'a str>,
    hint: Option<&'static str>,
    mtu: Option<&'a str>,
    icmp: Option<&'a str>,
}

/// The path row through serde: the reference [`write_path`] is held to.
#[cfg(test)]
#[derive(Serialize)]
struct JsonPath<'a> {
    #[serde(flatten)]
    flow: JsonFlowFields<'a>,
    sent: u64,
    arrived: u64,
    hops: Vec<JsonHop<'a>>,
    lost: Vec<JsonLost<'a>>,
    incomplete: &'a [String],
    notes: &'a [String],
}

/// `type`, `scope`, `seconds`, then [`Health::fields`].
struct JsonHealth<'a> {
    scope: &'static str,
    seconds: f64,
    health: &'a crate::output::Health,
}

impl Serialize for JsonHealth<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let fields = self.health.fields();
        let mut m = s.serialize_map(Some(3 + fields.len()))?;
        m.serialize_entry("type", "health")?;
        m.serialize_entry("scope", self.scope)?;
        m.serialize_entry("seconds", &self.seconds)?;
        for (name, n) in fields {
            m.serialize_entry(name, &n)?;
        }
        m.end()
    }
}

#[cfg(test)]
fn flow<'a>(at: &At, row: &'a FlowRow) -> JsonFlow<'a> {
    JsonFlow {
        flow: flow_fields(
            "flow",
            at,
            &row.netns,
            Some(&row.iface),
            Some(row.dir.as_str()),
            &row.id,
        ),
        packets: row.counts.packets,
        bytes: row.counts.bytes,
        frags_first: row.counts.frags_first,
        frags_rest: row.counts.frags_rest,
        df: row.counts.df,
        max_len: row.counts.max_len,
    }
}

fn drop_row<'a>(at: &At, row: &'a DropRow) -> JsonDrop<'a> {
    JsonDrop {
        flow: flow_fields("drop", at, &row.netns, row.iface.as_deref(), None, &row.id),
        reason: row.reason.as_deref(),
        location: &row.location,
        fragment: row.fragment,
        count: row.counts.packets,
        bytes: row.counts.bytes,
        hint: hint(row.reason.as_deref(), &row.location),
    }
}

fn verdict<'a>(at: &At, row: &'a VerdictRow) -> JsonVerdict<'a> {
    JsonVerdict {
        flow: flow_fields(
            "verdict",
            at,
            &row.netns,
            row.iface.as_deref(),
            None,
            &row.id,
        ),
        hook: row.hook.as_str(),
        family: row.family.as_str(),
        table: row.table.as_str(),
        accepted: row.counts.accepted(),
        dropped: row.counts.dropped(),
        rule: row.rule.as_deref(),
    }
}

fn icmp<'a>(at: &At, row: &'a IcmpRow) -> JsonIcmp<'a> {
    JsonIcmp {
        flow: flow_fields(
            "icmp",
            at,
            &row.netns,
            row.iface.as_deref(),
            Some(row.dir.as_str()),
            &row.id,
        ),
        kind: row.kind,
        icmp_type: row.icmp_type,
        icmp_code: row.icmp_code,
        mtu: row.mtu,
        count: row.count,
    }
}

fn frag<'a>(at: &At, row: &'a FragRow) -> JsonFrag<'a> {
    JsonFrag {
        flow: flow_fields(
            "frag",
            at,
            &row.netns,
            Some(&row.iface),
            Some(row.dir.as_str()),
            &row.id,
        ),
        datagrams: row.datagrams,
        reassembled: row.reassembled,
        datagrams_lost: row.datagrams_lost,
        fragments: row.fragments,
        fragments_lost: row.fragments_lost,
        reassembly_failed: row.reassembly_failed,
    }
}

fn mtu<'a>(at: &At, row: &'a MtuRow) -> JsonMtu<'a> {
    let f = &row.finding;
    JsonMtu {
        r#type: "mtu",
        scope: at.scope.as_str(),
        kind: f.kind.as_str(),
        devices: &f.devices,
        overhead: f.overhead,
        limit: f.limit,
        finding: &f.finding,
        flows: row
            .flows
            .iter()
            .map(|fl| JsonMtuFlow {
                flow: flow_fields(
                    "flow",
                    at,
                    &fl.netns,
                    Some(&fl.iface),
                    Some(fl.dir.as_str()),
                    &fl.id,
                ),
                max_len: fl.counts.max_len,
                packets: fl.counts.packets,
            })
            .collect(),
    }
}

fn rule<'a>(at: &At, row: &'a RuleRow) -> JsonRule<'a> {
    JsonRule {
        flow: flow_fields("rule", at, &row.netns, None, None, &row.id),
        family: row.family.map_or("?", Family::as_str),
        table: &row.table,
        chain: &row.chain,
        hook: row.hook.map(Hook::as_str),
        handle: row.handle,
        rule: row.rule.as_deref(),
        verdict: row.verdict,
        count: row.count,
    }
}

#[cfg(test)]
fn path<'a>(at: &At, row: &'a PathRow) -> JsonPath<'a> {
    let (netns, iface, dir) = row.origin();
    JsonPath {
        flow: flow_fields("path", at, netns, iface, dir.map(|d| d.as_str()), &row.id),
        sent: row.sent(),
        arrived: row.arrived(),
        hops: row
            .hops
            .iter()
            .map(|h| JsonHop {
                netns: &h.netns,
                netns_inode: at.inode(&h.netns),
                iface: &h.iface,
                dir: h.dir.as_str(),
                vxlan: h.vxlan,
                packets: h.counts.packets,
                bytes: h.counts.bytes,
                frags_first: h.counts.frags_first,
                frags_rest: h.counts.frags_rest,
                max_len: h.counts.max_len,
            })
            .collect(),
        lost: row
            .lost
            .iter()
            .map(|l| JsonLost {
                after: l.after,
                netns: &l.netns,
                iface: l.iface.as_deref(),
                count: l.count,
                reason: l.reason.as_deref(),
                location: l.location.as_deref(),
                hook: l.hook.map(Hook::as_str),
                rule: l.rule.as_deref(),
                hint: l.hint(),
                mtu: l.mtu.as_deref(),
                icmp: l.icmp.as_deref(),
            })
            .collect(),
        incomplete: &row.incomplete,
        notes: &row.notes,
    }
}

/// Writes a flow row as [`JsonFlow`] would, without serde. Flow rows are
/// most of the output (one per flow, hop and direction every interval, tens
/// of thousands a second on a busy host), and serde's generic path escapes
/// every key and formats through `fmt`; this writes the fixed parts as they
/// are. A test holds the two byte for byte equal. The sink writes the two
/// parts, the device's once per device.
#[cfg(test)]
fn write_flow(out: &mut impl Write, at: &At, row: &FlowRow) -> io::Result<()> {
    write_flow_place(out, at, row)?;
    write_flow_rest(out, at, row)
}

/// A flow row up to its `"dir"`: the same for every row of a device.
fn write_flow_place(out: &mut impl Write, at: &At, row: &FlowRow) -> io::Result<()> {
    write_place(
        out,
        "flow",
        at,
        &row.netns,
        Some(&row.iface),
        Some(row.dir.as_str()),
    )
}

/// A flow row after its `"dir"`.
fn write_flow_rest(out: &mut impl Write, at: &At, row: &FlowRow) -> io::Result<()> {
    write_id(out, at, &row.id)?;
    let c = &row.counts;
    write_nums(
        out,
        [
            (&b",\"packets\":"[..], c.packets),
            (b",\"bytes\":", c.bytes),
            (b",\"frags_first\":", c.frags_first),
            (b",\"frags_rest\":", c.frags_rest),
            (b",\"df\":", c.df),
            (b",\"max_len\":", c.max_len as u64),
        ],
    )?;
    out.write_all(b"}\n")
}

/// Writes a path row as [`JsonPath`] would, without serde: one per
/// conversation every interval, as [`write_flow`] for the same reasons. A
/// test holds the two byte for byte equal.
fn write_path(out: &mut Vec<u8>, at: &At, row: &PathRow, seen: &mut Seen) -> io::Result<()> {
    let (netns, iface, dir) = row.origin();
    let key = (addr(netns), iface.map_or(0, addr), Part::Path(dir));
    seen.copy(out, key, |out| {
        write_place(out, "path", at, netns, iface, dir.map(|d| d.as_str()))
    })?;
    write_id(out, at, &row.id)?;
    out.write_all(b",\"sent\":")?;
    write_num(out, row.sent())?;
    out.write_all(b",\"arrived\":")?;
    write_num(out, row.arrived())?;
    out.write_all(b",\"hops\":[")?;
    for (i, h) in row.hops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let key = (addr(&h.netns), addr(&h.iface), Part::Hop(h.dir, h.vxlan));
        seen.copy(out, key, |out| {
            out.write_all(b"{\"netns\":")?;
            write_str(out, &h.netns)?;
            out.write_all(b",\"netns_inode\":")?;
            write_opt(out, at.inode(&h.netns))?;
            out.write_all(b",\"iface\":")?;
            write_str(out, &h.iface)?;
            out.write_all(b",\"dir\":\"")?;
            out.write_all(h.dir.as_str().as_bytes())?;
            out.write_all(if h.vxlan {
                b"\",\"vxlan\":true"
            } else {
                b"\",\"vxlan\":false"
            })
        })?;
        let c = &h.counts;
        write_nums(
            out,
            [
                (&b",\"packets\":"[..], c.packets),
                (b",\"bytes\":", c.bytes),
                (b",\"frags_first\":", c.frags_first),
                (b",\"frags_rest\":", c.frags_rest),
                (b",\"max_len\":", c.max_len as u64),
            ],
        )?;
        out.write_all(b"}")?;
    }
    out.write_all(b"],\"lost\":[")?;
    for (i, l) in row.lost.iter().enumerate() {
        out.write_all(if i == 0 {
            b"{\"after\":"
        } else {
            b",{\"after\":"
        })?;
        write_opt(out, l.after.map(|a| a as u64))?;
        out.write_all(b",\"netns\":")?;
        write_str(out, &l.netns)?;
        out.write_all(b",\"iface\":")?;
        write_opt_str(out, l.iface.as_deref())?;
        out.write_all(b",\"count\":")?;
        write_num(out, l.count)?;
        for (key, v) in [
            (&b",\"reason\":"[..], l.reason.as_deref()),
            (b",\"location\":", l.location.as_deref()),
            (b",\"hook\":", l.hook.map(Hook::as_str)),
            (b",\"rule\":", l.rule.as_deref()),
            (b",\"hint\":", l.hint()),
            (b",\"mtu\":", l.mtu.as_deref()),
            (b",\"icmp\":", l.icmp.as_deref()),
        ] {
            out.write_all(key)?;
            write_opt_str(out, v)?;
        }
        out.write_all(b"}")?;
    }
    for (key, list) in [
        (&b"],\"incomplete\":["[..], &row.incomplete),
        (b"],\"notes\":[", &row.notes),
    ] {
        out.write_all(key)?;
        for (i, s) in list.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            write_str(out, s)?;
        }
    }
    out.write_all(b"]}\n")
}

/// What the rows of one report write again and again about the few places
/// they cross (a path's first place, each of its hops): written once and
/// copied after. Found by the addresses of the names, which the report
/// keeps alive and unchanged while it is written; an equal name elsewhere
/// in memory is only written again.
#[derive(Default)]
struct Seen {
    /// (netns address, iface address or 0, what of the place): range in `bytes`.
    index: rustc_hash::FxHashMap<(usize, usize, Part), (usize, usize)>,
    bytes: Vec<u8>,
}

impl Seen {
    /// Copies to `out` what `write` writes for `key`, writing it the first time.
    fn copy(
        &mut self,
        out: &mut Vec<u8>,
        key: (usize, usize, Part),
        write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let (start, end) = match self.index.get(&key) {
            Some(&range) => range,
            None => {
                let start = self.bytes.len();
                write(&mut self.bytes)?;
                let range = (start, self.bytes.len());
                self.index.insert(key, range);
                range
            }
        };
        out.extend_from_slice(&self.bytes[start..end]);
        Ok(())
    }
}

/// What [`Seen`] holds of a place: the fields a path row starts with (its
/// first device and direction, if any), or a hop's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path(Option<Direction>),
    Hop(Direction, bool),
}

/// One byte, not the derived hash's word per discriminant and field: this
/// hash runs for each of a report's tens of thousands of places, and the
/// derived one made the report's JSON 6% slower.
impl Hash for Part {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u8(match *self {
            Part::Path(None) => 0,
            Part::Path(Some(d)) => 1 + d as u8,
            Part::Hop(d, vxlan) => 4 + d as u8 * 2 + vxlan as u8,
        })
    }
}

/// Where a name is in memory: the identity [`Seen`] knows it by.
fn addr(s: &str) -> usize {
    s.as_ptr() as usize
}

/// The fields of [`JsonFlowFields`] from `{"type":..` up to `"dir":..,`.
fn write_place(
    out: &mut impl Write,
    r#type: &'static str,
    at: &At,
    netns: &str,
    iface: Option<&str>,
    dir: Option<&'static str>,
) -> io::Result<()> {
    out.write_all(b"{\"type\":\"")?;
    out.write_all(r#type.as_bytes())?;
    out.write_all(b"\",\"scope\":\"")?;
    out.write_all(at.scope.as_str().as_bytes())?;
    out.write_all(b"\",\"netns\":")?;
    write_str(out, netns)?;
    out.write_all(b",\"netns_inode\":")?;
    write_opt(out, at.inode(netns))?;
    out.write_all(b",\"iface\":")?;
    write_opt_str(out, iface)?;
    out.write_all(b",\"dir\":")?;
    match dir {
        Some(d) => {
            out.write_all(b"\"")?;
            out.write_all(d.as_bytes())?;
            out.write_all(b"\",")?;
        }
        None => out.write_all(b"null,")?,
    }
    Ok(())
}

/// The fields of [`JsonFlowFields`] from `"proto":..` up to `"orig":..`.
fn write_id(out: &mut impl Write, at: &At, id: &FlowId) -> io::Result<()> {
    write_endpoints(out, &Endpoints::of(&id.outer))?;
    out.write_all(b",\"vni\":")?;
    write_opt(out, vni(id))?;
    out.write_all(b",\"inner\":")?;
    match inner(id) {
        Some(e) => {
            out.write_all(b"{")?;
            write_endpoints(out, &e)?;
            out.write_all(b"}")?;
        }
        None => out.write_all(b"null")?,
    }
    out.write_all(b",\"orig\":")?;
    match crate::analysis::nat::orig(at.nat, id) {
        Some(a) => serde_json::to_writer(&mut *out, &a.to_string())?,
        None => out.write_all(b"null")?,
    }
    Ok(())
}

/// A JSON string, escaped as serde_json escapes it. Names rarely need
/// escaping: those are written as they are.
fn write_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        out.write_all(b"\"")
    } else {
        Ok(serde_json::to_writer(out, s)?)
    }
}

fn write_opt_str(out: &mut impl Write, s: Option<&str>) -> io::Result<()> {
    match s {
        Some(s) => write_str(out, s),
        None => out.write_all(b"null"),
    }
}

/// `"proto":..,"src":..,"dst":..,"sport":..,"dport":..`
fn write_endpoints(out: &mut impl Write, e: &Endpoints) -> io::Result<()> {
    out.write_all(b"\"proto\":")?;
    match e.proto {
        Proto::Named(n) => {
            out.write_all(b"\"")?;
            out.write_all(n.as_bytes())?;
            out.write_all(b"\"")?;
        }
        Proto::Number(n) => write_num(out, n as u64)?,
    }
    for (key, addr) in [(&b",\"src\":"[..], e.src), (b",\"dst\":", e.dst)] {
        out.write_all(key)?;
        match addr {
            Some(IpAddr::V4(a)) => write_v4(out, a.octets())?,
            Some(a @ IpAddr::V6(_)) => write!(out, "\"{a}\"")?,
            None => out.write_all(b"null")?,
        }
    }
    out.write_all(b",\"sport\":")?;
    write_opt(out, e.sport)?;
    out.write_all(b",\"dport\":")?;
    write_opt(out, e.dport)
}

/// `"a.b.c.d"`, made on the stack and written at once: two addresses a
/// row, and a write of each octet and dot is a call to copy a byte or two.
fn write_v4(out: &mut impl Write, octets: [u8; 4]) -> io::Result<()> {
    let mut buf = [0u8; 17];
    buf[0] = b'"';
    let mut n = 1;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    buf[n] = b'"';
    out.write_all(&buf[..=n])
}

/// `key` then its number, for each pair: the keys carry their own `,"..":`.
fn write_nums<const N: usize>(out: &mut impl Write, fields: [(&[u8], u64); N]) -> io::Result<()> {
    for (key, n) in fields {
        out.write_all(key)?;
        write_num(out, n)?;
    }
    Ok(())
}

fn write_num(out: &mut impl Write, n: u64) -> io::Result<()> {
    out.write_all(itoa::Buffer::new().format(n).as_bytes())
}

fn write_opt(out: &mut impl Write, n: Option<impl Into<u64>>) -> io::Result<()> {
    match n {
        Some(n) => write_num(out, n.into()),
        None => out.write_all(b"null"),
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        let at = At::of(r);
        // Rows come by device: its part of them is written once, then
        // copied (the names' addresses say when the device changes).
        let mut place: Vec<u8> = Vec::new();
        let mut of = None;
        for row in &r.flows {
            let key = (
                Rc::as_ptr(&row.netns).cast::<u8>(),
                Rc::as_ptr(&row.iface).cast::<u8>(),
                row.dir,
            );
            if of != Some(key) {
                place.clear();
                write_flow_place(&mut place, &at, row)?;
                of = Some(key);
            }
            self.out.buf.extend_from_slice(&place);
            write_flow_rest(&mut self.out.buf, &at, row)?;
            self.out.spill()?;
        }
        for row in &r.drops {
            self.line(&drop_row(&at, row))?;
        }
        for row in &r.verdicts {
            self.line(&verdict(&at, row))?;
        }
        for row in &r.icmps {
            self.line(&icmp(&at, row))?;
        }
        for row in &r.frags {
            self.line(&frag(&at, row))?;
        }
        for row in &r.mtu {
            self.line(&mtu(&at, row))?;
        }
        for row in &r.rules {
            self.line(&rule(&at, row))?;
        }
        let mut seen = Seen::default();
        for row in &r.paths {
            write_path(&mut self.out.buf, &at, row, &mut seen)?;
            self.out.spill()?;
        }
        if let Some(b) = &r.benign {
            self.line(&JsonBenign {
                r#type: "benign",
                scope: r.scope.as_str(),
                drops: b.drops(),
                echo_replies: b.echo_replies,
                empty_queue_purges: b.empty_queue_purges,
                ipv6_link_local: b.ipv6_link_local,
                rows_hidden: b.rows_hidden,
                hint: super::text::BENIGN_HINT,
            })?;
        }
        if r.scope != Scope::First {
            self.line(&JsonHealth {
                scope: r.scope.as_str(),
                seconds: r.elapsed.as_secs_f64(),
                health: &r.health,
            })?;
        }
        self.out.finish()
    }
}

#[cfg(test)]
mod tests;
