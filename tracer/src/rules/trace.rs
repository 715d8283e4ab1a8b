//! Exact attribution with nftables tracing: a table of tracer's own marks the
//! packets the user asked about (`meta nftrace set 1`), the kernel then reports
//! every rule and chain policy those packets meet over netlink, and the events
//! are folded into verdicts per flow, table, chain and rule.
//!
//! Kernel behaviour this relies on (kernel 6.18, checked with captured events):
//! - Events go to the `NFNLGRP_NFTRACE` group of `NETLINK_NETFILTER`, in the
//!   namespace of the packet, and only while someone listens there: open the
//!   [`TraceReader`] before the traffic.
//! - Each call of a base chain for a packet yields events sharing one trace id:
//!   the first carries the packet's headers, rules that decide something give a
//!   `Rule` event with their handle and verdict, and the base chain ends with a
//!   terminal verdict (accept or drop from a rule, or the chain's `Policy`).
//! - The id is a hash of the skb address, flow hash and input interface, so it
//!   stays the same across the chains and hooks a packet passes, but may repeat
//!   for a later packet of the same flow. Events are therefore grouped in order
//!   of arrival, never by id alone.
//! - iptables-nft rules are nftables rules: they show up with their table
//!   (`ip filter`), chain (`INPUT`) and handle; iptables-legacy rules never do.

use std::{
    collections::HashMap,
    fs::File,
    io::{ErrorKind, Write as _},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
        unix::process::CommandExt as _,
    },
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use tracer_ebpf::{
    FAMILY_IPV4, FAMILY_IPV6, FlowId, MAX_VXLAN_PORTS,
    parse::{Bytes, ETH_P_IP, ETH_P_IPV6, parse_from_l3},
};

use super::rules::Family;

/// Prefix of the tables tracer creates; [`super::rules`] never lists them.
pub const TABLE_PREFIX: &str = "tracer_";

// ---- The trace table -----------------------------------------------------

/// `table inet tracer_<pid>`: sets `nftrace` on the packets matching a filter,
/// at prerouting and output priority -350 (before conntrack and every
/// iptables table). Removed when dropped, panics included; a run killed
/// before that leaves it for [`remove_stale`].
///
/// One per namespace per process: creating a second one in the same
/// namespace replaces the first.
#[derive(Debug)]
pub struct TraceTable {
    name: String,
    /// The namespace it was created in, so that dropping it from any thread
    /// deletes it there.
    netns: File,
}

impl TraceTable {
    /// Creates the table in the calling thread's network namespace; `filter` is
    /// an nft match expression such as `udp dport 4789` or
    /// `ip saddr 10.0.0.1 tcp dport 80` (empty: every packet).
    pub fn create(filter: &str) -> Result<TraceTable> {
        let filter = filter.trim();
        check_filter(filter)?;
        let netns = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let name = format!("{TABLE_PREFIX}{}", std::process::id());
        let ruleset = trace_ruleset(&name, filter);
        let out = nft(&netns, &["-f", "-"], Some(&ruleset))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!("bad --explain filter '{filter}': {}", first_error(&stderr));
        }
        Ok(TraceTable { name, netns })
    }

    /// `tracer_<pid>`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        let _ = nft(&self.netns, &["delete", "table", "inet", &self.name], None);
    }
}

/// The ruleset `nft -f -` gets: (re)creates the table atomically.
fn trace_ruleset(name: &str, filter: &str) -> String {
    let rule = if filter.is_empty() {
        "meta nftrace set 1".to_string()
    } else {
        format!("{filter} meta nftrace set 1")
    };
    format!(
        "table inet {name}\n\
         delete table inet {name}\n\
         table inet {name} {{\n\
         \tchain pre {{\n\
         \t\ttype filter hook prerouting priority -350; policy accept;\n\
         \t\t{rule}\n\
         \t}}\n\
         \tchain out {{\n\
         \t\ttype filter hook output priority -350; policy accept;\n\
         \t\t{rule}\n\
         \t}}\n\
         }}\n"
    )
}

/// A filter must stay one expression inside the rule: no statement
/// separators, comments or braces that close the chain.
fn check_filter(filter: &str) -> Result<()> {
    if let Some(c) = filter
        .chars()
        .find(|c| matches!(c, '\n' | '\r' | ';' | '#'))
    {
        bail!("bad --explain filter '{filter}': {c:?} is not allowed in a match expression");
    }
    let mut depth = 0i32;
    for c in filter.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 {
        bail!("bad --explain filter '{filter}': unbalanced braces");
    }
    Ok(())
}

/// nft's complaint without its location (`/dev/stdin:6:7-12: Error: `), which
/// points into the generated ruleset rather than at what the user typed.
fn first_error(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("Error:"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("nft failed");
    match line.split_once("Error: ") {
        Some((_, msg)) => msg.trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// Runs nft inside `netns` (the child enters it before exec).
fn nft(netns: &File, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns is a plain syscall, safe between fork and exec; `fd`
    // stays open for as long as `netns` lives, which outlives the child's start.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            anyhow!("nft not found: install nftables to use --explain")
        } else {
            anyhow!("run nft: {e}")
        }
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("nft stdin")?;
        pipe.write_all(input.as_bytes()).context("write to nft")?;
    }
    child.wait_with_output().context("wait for nft")
}

/// Deletes the `inet tracer_<pid>` tables of the calling thread's namespace
/// whose process is gone (left by a killed run); returns their names. Tables
/// of live processes and every other table are left alone.
pub fn remove_stale() -> Result<Vec<String>> {
    let netns = File::open("/proc/thread-self/ns/net").context("open own netns")?;
    let out = nft(&netns, &["list", "tables"], None)?;
    if !out.status.success() {
        bail!(
            "nft list tables: {}",
            first_error(&String::from_utf8_lossy(&out.stderr))
        );
    }
    let mut removed = Vec::new();
    for name in stale_tables(&String::from_utf8_lossy(&out.stdout), pid_alive) {
        let out = nft(&netns, &["delete", "table", "inet", &name], None)?;
        // Someone else may have removed it meanwhile: only a table that is gone counts.
        if out.status.success() {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Names of `table inet tracer_<pid>` lines of `nft list tables` whose pid is dead.
fn stale_tables(list: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    list.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some("table"), Some("inet"), Some(name), None) => Some(name),
                _ => None,
            }
        })
        .filter(|name| {
            name.strip_prefix(TABLE_PREFIX)
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && !alive(pid))
        })
        .map(str::to_string)
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

// ---- Trace events ----------------------------------------------------------

/// `NFNLGRP_NFTRACE`.
pub const NFNLGRP_NFTRACE: u32 = 9;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE` (17 in `enum nf_tables_msg_types`).
pub const NFT_TRACE_MSG_TYPE: u16 = (10 << 8) | 17;

// Verdict codes (`NF_*` are netfilter's, `NFT_*` nftables' own).
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NF_STOLEN: i32 = 2;
pub const NF_QUEUE: i32 = 3;
pub const NF_REPEAT: i32 = 4;
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_BREAK: i32 = -2;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

/// Name of a verdict code: `drop`, `accept`, `jump`, ...
pub fn verdict_name(code: i32) -> &'static str {
    match code {
        NFT_CONTINUE => "continue",
        NFT_BREAK => "break",
        NFT_JUMP => "jump",
        NFT_GOTO => "goto",
        NFT_RETURN => "return",
        c if c >= 0 => match c & 0xff {
            NF_DROP => "drop",
            NF_ACCEPT => "accept",
            NF_STOLEN => "stolen",
            NF_QUEUE => "queue",
            NF_REPEAT => "repeat",
            _ => "stop",
        },
        _ => "unknown",
    }
}

// enum nft_trace_attributes
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;
// enum nft_verdict_attributes
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
// enum nft_trace_types
const NFT_TRACETYPE_POLICY: u32 = 1;
const NFT_TRACETYPE_RETURN: u32 = 2;
const NFT_TRACETYPE_RULE: u32 = 3;

/// What a trace event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A rule matched and decided something (its handle and verdict are set).
    Rule,
    /// The end of a regular chain was reached: back to the calling chain.
    Return,
    /// The end of a base chain was reached: its policy applies.
    Policy,
}

/// One nftables trace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Groups the events of one packet (see the module doc for its limits).
    pub id: u32,
    /// The family of the table (`ip filter` vs `ip6 filter`).
    pub family: Option<Family>,
    pub table: String,
    pub chain: String,
    /// The rule's nftables handle (`Rule` events).
    pub rule_handle: Option<u64>,
    pub kind: TraceKind,
    /// The verdict code: the rule's for `Rule` and `Return` events, the
    /// chain's policy (`NF_ACCEPT` or `NF_DROP`) for `Policy` events.
    pub verdict: Option<i32>,
    /// Target chain of a jump or goto verdict.
    pub target_chain: Option<String>,
    /// `NFPROTO_IPV4` (2) or `NFPROTO_IPV6` (10): the packet's protocol (0 if not given).
    pub nfproto: u8,
    /// Up to 40 bytes from the network header, on the first event of each
    /// base chain for the packet; empty on the others.
    pub network_header: Vec<u8>,
    /// Up to 20 bytes from the transport header, as `network_header`.
    pub transport_header: Vec<u8>,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
}

impl TraceEvent {
    /// The verdict if it ends the base chain (accept, drop, queue, stolen),
    /// masked to the `NF_*` code; `None` for continue, jump, goto, return.
    pub fn terminal_verdict(&self) -> Option<i32> {
        match self.kind {
            TraceKind::Return => None,
            TraceKind::Rule | TraceKind::Policy => {
                self.verdict.filter(|v| *v >= 0).map(|v| v & 0xff)
            }
        }
    }

    /// The flow of the packet, from the headers this event carries (`None`
    /// if it carries none or they are not IP). `vxlan_ports` as for the TC
    /// programs: with them the VNI is filled; the inner headers are never
    /// in a trace event, so the inner tuple stays empty.
    pub fn flow(&self, vxlan_ports: &[u16; MAX_VXLAN_PORTS]) -> Option<FlowId> {
        flow_of(
            self.nfproto,
            &self.network_header,
            &self.transport_header,
            vxlan_ports,
        )
    }
}

fn flow_of(
    nfproto: u8,
    network: &[u8],
    transport: &[u8],
    vxlan_ports: &[u16; MAX_VXLAN_PORTS],
) -> Option<FlowId> {
    let version = network.first()? >> 4;
    let ethertype = match (nfproto, version) {
        (2, 4) | (0, 4) => ETH_P_IP,
        (10, 6) | (0, 6) => ETH_P_IPV6,
        _ => return None,
    };
    // The kernel gives at most 40 bytes of network header. Only when that is
    // the whole of it does the transport header follow right after.
    let complete = match ethertype {
        ETH_P_IP => network.len() == usize::from(network[0] & 0x0f) * 4,
        _ => network.len() == 40 && !matches!(network[6], 0 | 43 | 44 | 51 | 60),
    };
    let mut id = FlowId::default();
    if complete {
        let mut buf = network.to_vec();
        buf.extend_from_slice(transport);
        parse_from_l3(&Bytes(&buf), 0, ethertype, vxlan_ports, &mut id);
    } else if ethertype == ETH_P_IPV6 && network.len() >= 40 {
        // Extension headers cut off: addresses, and the first next-header as protocol.
        id.outer.family = FAMILY_IPV6;
        id.outer.proto = network[6];
        id.outer.src.copy_from_slice(&network[8..24]);
        id.outer.dst.copy_from_slice(&network[24..40]);
    } else {
        parse_from_l3(&Bytes(network), 0, ethertype, vxlan_ports, &mut id);
    }
    (id.outer.family == FAMILY_IPV4 || id.outer.family == FAMILY_IPV6).then_some(id)
}

/// Decodes the nftables trace events in a buffer of netlink messages (what
/// one `recv` on a [`TraceReader`] socket returns). Other messages and
/// malformed parts are skipped.
pub fn decode(buf: &[u8]) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        if len < 16 || off + len > buf.len() {
            break;
        }
        // nlmsghdr (16 bytes), then nfgenmsg: family, version, resource id.
        if ty == NFT_TRACE_MSG_TYPE
            && len >= 20
            && let Some(ev) = decode_trace(buf[off + 16], &buf[off + 20..off + len])
        {
            events.push(ev);
        }
        off += align4(len);
    }
    events
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink attributes: (type without the NESTED and BYTEORDER flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn decode_trace(family: u8, payload: &[u8]) -> Option<TraceEvent> {
    let mut ev = TraceEvent {
        id: 0,
        family: Family::from_nfproto(family),
        table: String::new(),
        chain: String::new(),
        rule_handle: None,
        kind: TraceKind::Rule,
        verdict: None,
        target_chain: None,
        nfproto: 0,
        network_header: Vec::new(),
        transport_header: Vec::new(),
        iif: None,
        oif: None,
    };
    let mut kind = None;
    let mut policy = None;
    for (ty, v) in attrs(payload) {
        match ty {
            NFTA_TRACE_TABLE => ev.table = string(v),
            NFTA_TRACE_CHAIN => ev.chain = string(v),
            NFTA_TRACE_RULE_HANDLE => ev.rule_handle = be64(v),
            NFTA_TRACE_TYPE => kind = be32(v),
            NFTA_TRACE_VERDICT => {
                for (vty, vv) in attrs(v) {
                    match vty {
                        NFTA_VERDICT_CODE => ev.verdict = be32(vv).map(|c| c as i32),
                        NFTA_VERDICT_CHAIN => ev.target_chain = Some(string(vv)),
                        _ => {}
                    }
                }
            }
            NFTA_TRACE_ID => ev.id = be32(v)?,
            NFTA_TRACE_NETWORK_HEADER => ev.network_header = v.to_vec(),
            NFTA_TRACE_TRANSPORT_HEADER => ev.transport_header = v.to_vec(),
            NFTA_TRACE_IIF => ev.iif = be32(v),
            NFTA_TRACE_OIF => ev.oif = be32(v),
            NFTA_TRACE_NFPROTO => ev.nfproto = be32(v).map(|p| p as u8).unwrap_or(0),
            NFTA_TRACE_POLICY => policy = be32(v).map(|p| p as i32),
            _ => {}
        }
    }
    ev.kind = match kind? {
        NFT_TRACETYPE_RULE => TraceKind::Rule,
        NFT_TRACETYPE_RETURN => TraceKind::Return,
        NFT_TRACETYPE_POLICY => TraceKind::Policy,
        _ => return None,
    };
    if ev.kind == TraceKind::Policy {
        ev.verdict = policy.or(ev.verdict);
    }
    Some(ev)
}

// ---- Reading them ----------------------------------------------------------

/// A netlink socket receiving the nftables trace events of the namespace it
/// was opened in. Non-blocking: poll its fd (e.g. tokio `AsyncFd`) and call
/// [`TraceReader::read`] when it is readable.
pub struct TraceReader {
    socket: Socket,
    buf: Vec<u8>,
    overruns: u64,
}

impl TraceReader {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<TraceReader> {
        let mut socket = Socket::new(NETLINK_NETFILTER).context("netfilter netlink socket")?;
        socket.bind_auto().context("netlink bind")?;
        socket
            .add_membership(NFNLGRP_NFTRACE)
            .context("subscribe to nftables trace events")?;
        socket
            .set_non_blocking(true)
            .context("netlink non-blocking")?;
        // A burst of traced packets makes several events each: a large buffer
        // (beyond rmem_max, as root may) keeps the kernel from dropping them.
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a pointer to a c_int of the given size.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            let _ = socket.set_rx_buf_sz(size as usize);
        }
        Ok(TraceReader {
            socket,
            buf: vec![0; 1 << 16],
            overruns: 0,
        })
    }

    /// Every event received so far, without blocking: reads until the socket
    /// would block (so an `AsyncFd` guard may then be cleared).
    pub fn read(&mut self) -> Result<Vec<TraceEvent>> {
        let mut events = Vec::new();
        self.read_with(|buf| events.extend(decode(buf)))?;
        Ok(events)
    }

    /// How many times the kernel had to drop events because the socket
    /// buffer was full (`ENOBUFS`): when non-zero, counts are lower bounds.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    fn read_with(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => f(&self.buf[..n.min(self.buf.len())]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.overruns += 1,
                Err(e) => return Err(e).context("read nftables trace events"),
            }
        }
    }

    /// The raw datagrams, for capturing fixtures.
    #[cfg(test)]
    pub(super) fn read_raw(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.read_with(|buf| out.push(buf.to_vec()))?;
        Ok(out)
    }
}

impl AsRawFd for TraceReader {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for TraceReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

// ---- Folding them into verdicts ---------------------------------------------

/// Where and how one base chain decided about packets of one flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictKey {
    /// The packet's flow (all zero if its headers were never seen).
    pub flow: FlowId,
    pub family: Option<Family>,
    pub table: String,
    /// The chain of the deciding rule: a regular chain when the verdict came
    /// from a rule jumped to, else the base chain.
    pub chain: String,
    /// The deciding rule; `None` when the base chain's policy decided.
    pub rule_handle: Option<u64>,
    /// `NF_DROP`, `NF_ACCEPT`, `NF_QUEUE` or `NF_STOLEN`. A rejected packet is `NF_DROP`.
    pub verdict: i32,
}

/// Counts of packets per [`VerdictKey`], folded from trace events.
///
/// Every base chain a traced packet passes ends in one terminal verdict, so a
/// packet counts once per base chain (table and hook) it went through: an
/// `accept` in each until, possibly, one `drop`, which is its fate. tracer's
/// own `tracer_*` table is left out.
#[derive(Debug, Clone)]
pub struct Verdicts {
    vxlan_ports: [u16; MAX_VXLAN_PORTS],
    /// Flow of the packet each trace id is in a base chain of, from the
    /// event that carried its headers; forgotten at the chain's verdict.
    open: HashMap<u32, FlowId>,
    counts: HashMap<VerdictKey, u64>,
}

impl Verdicts {
    /// `vxlan_ports`: UDP ports whose packets get their VNI in the flow, as for the TC programs.
    pub fn new(vxlan_ports: [u16; MAX_VXLAN_PORTS]) -> Verdicts {
        Verdicts {
            vxlan_ports,
            open: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// Folds events in, in the order they were received.
    pub fn add(&mut self, events: &[TraceEvent]) {
        for ev in events {
            if let Some(flow) = ev.flow(&self.vxlan_ports) {
                if self.open.len() >= 1 << 16 {
                    // Events lost before their verdict would otherwise pile up.
                    self.open.clear();
                }
                self.open.insert(ev.id, flow);
            }
            let Some(verdict) = ev.terminal_verdict() else {
                continue;
            };
            let flow = self.open.remove(&ev.id).unwrap_or_default();
            if ev.table.starts_with(TABLE_PREFIX) {
                continue;
            }
            let key = VerdictKey {
                flow,
                family: ev.family,
                table: ev.table.clone(),
                chain: ev.chain.clone(),
                rule_handle: match ev.kind {
                    TraceKind::Policy => None,
                    _ => ev.rule_handle,
                },
                verdict,
            };
            *self.counts.entry(key).or_default() += 1;
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &HashMap<VerdictKey, u64> {
        &self.counts
    }

    /// The counts so far, leaving none (for per-interval reports).
    pub fn take(&mut self) -> HashMap<VerdictKey, u64> {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{TUPLE_DF, TUPLE_FRAG_FIRST, TUPLE_PORTS, Tuple};

    use super::*;

    /// The datagrams of fixtures/trace-events.hex (see its header for how they were made).
    fn datagrams() -> Vec<Vec<u8>> {
        include_str!("fixtures/trace-events.hex")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }

    fn events() -> Vec<TraceEvent> {
        datagrams().iter().flat_map(|d| decode(d)).collect()
    }

    const A: [u8; 4] = [10, 3, 1, 1];
    const B: [u8; 4] = [10, 3, 1, 2];

    fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowId {
        let mut t = Tuple {
            sport,
            dport,
            proto: 17,
            family: FAMILY_IPV4,
            flags: TUPLE_PORTS | TUPLE_DF,
            ..Tuple::default()
        };
        t.src[..4].copy_from_slice(&src);
        t.dst[..4].copy_from_slice(&dst);
        FlowId {
            outer: t,
            ..FlowId::default()
        }
    }

    #[test]
    fn every_datagram_is_one_trace_message() {
        let d = datagrams();
        assert_eq!(d.len(), 71);
        for m in &d {
            assert_eq!(
                u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
                m.len()
            );
            assert_eq!(u16::from_ne_bytes([m[4], m[5]]), NFT_TRACE_MSG_TYPE);
            assert_eq!(decode(m).len(), 1);
        }
        // Several datagrams in one buffer decode as well.
        let all: Vec<u8> = d.concat();
        assert_eq!(decode(&all), events());
    }

    #[test]
    fn decodes_a_rule_event_with_headers() {
        let ev = &events()[0];
        assert_eq!(
            ev,
            &TraceEvent {
                id: 163328463,
                family: Some(Family::Inet),
                table: "tracer_13471".into(),
                chain: "pre".into(),
                rule_handle: Some(4),
                kind: TraceKind::Rule,
                verdict: Some(NFT_CONTINUE),
                target_chain: None,
                nfproto: 2,
                network_header: vec![
                    69, 0, 0, 38, 153, 205, 64, 0, 64, 17, 138, 241, 10, 3, 1, 1, 10, 3, 1, 2
                ],
                transport_header: vec![
                    156, 64, 20, 233, 0, 18, 22, 44, 90, 90, 90, 90, 90, 90, 90, 90, 90, 90
                ],
                iif: Some(2),
                oif: None,
            }
        );
        assert_eq!(ev.terminal_verdict(), None);
        assert_eq!(
            ev.flow(&[0; MAX_VXLAN_PORTS]),
            Some(udp4(A, 40000, B, 5353))
        );
    }

    #[test]
    fn decodes_drops_accepts_jumps_and_policies() {
        let evs = events();
        let rules = |family, table: &str, chain: &str, handle, verdict| {
            evs.iter()
                .filter(|e| {
                    e.kind == TraceKind::Rule
                        && e.family == Some(family)
                        && e.table == table
                        && e.chain == chain
                        && e.rule_handle == Some(handle)
                        && e.verdict == Some(verdict)
                })
                .count()
        };
        // iptables -j DROP: an nftables rule of table ip filter, with its handle.
        assert_eq!(rules(Family::Ipv4, "filter", "INPUT", 2, NF_DROP), 2);
        // iptables -j REJECT in a user chain: a drop, in that chain.
        assert_eq!(rules(Family::Ipv4, "filter", "OVERLAY", 5, NF_DROP), 2);
        // Native nft rules.
        assert_eq!(rules(Family::Inet, "fw", "input", 2, NF_DROP), 2);
        assert_eq!(rules(Family::Inet, "fw", "input", 3, NF_ACCEPT), 2);
        // Every packet of A but the nft-dropped ones jumped to OVERLAY...
        let jumps: Vec<&TraceEvent> = evs.iter().filter(|e| e.verdict == Some(NFT_JUMP)).collect();
        assert_eq!(jumps.len(), 6);
        assert!(
            jumps
                .iter()
                .all(|e| e.target_chain.as_deref() == Some("OVERLAY") && e.rule_handle == Some(4))
        );
        // ... and a chain's end shows as a rule event without handle, verdict continue.
        assert!(evs.iter().any(|e| e.chain == "OVERLAY"
            && e.kind == TraceKind::Rule
            && e.rule_handle.is_none()
            && e.verdict == Some(NFT_CONTINUE)));
        // Policies come with the policy as verdict and no handle.
        let policies: Vec<&TraceEvent> =
            evs.iter().filter(|e| e.kind == TraceKind::Policy).collect();
        assert!(!policies.is_empty());
        assert!(
            policies
                .iter()
                .all(|e| e.verdict == Some(NF_ACCEPT) && e.rule_handle.is_none())
        );
        // B's own datagram went through the output hook.
        let out: Vec<&TraceEvent> = evs.iter().filter(|e| e.oif.is_some()).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].chain.as_str(), out[0].oif, out[0].iif),
            ("out", Some(2), None)
        );
        assert_eq!(
            out[0].flow(&[0; MAX_VXLAN_PORTS]),
            Some(udp4(B, 40001, A, 7003))
        );
    }

    #[test]
    fn trace_ids_repeat_across_packets_of_a_flow() {
        // The two datagrams to 5353 share the id: the first was dropped and
        // its skb memory reused for the second.
        let evs = events();
        let firsts: Vec<&TraceEvent> = evs
            .iter()
            .filter(|e| {
                e.chain == "pre"
                    && e.rule_handle == Some(4)
                    && e.transport_header[2..4] == [0x14, 0xe9]
            })
            .collect();
        assert_eq!(firsts.len(), 2);
        assert_eq!(firsts[0].id, firsts[1].id);
        assert_ne!(firsts[0].network_header, firsts[1].network_header);
    }

    #[test]
    fn verdicts_per_flow_table_chain_and_rule() {
        let mut v = Verdicts::new([0; MAX_VXLAN_PORTS]);
        v.add(&events());
        let key = |dport, family, table: &str, chain: &str, handle, verdict| VerdictKey {
            flow: udp4(A, 40000, B, dport),
            family: Some(family),
            table: table.into(),
            chain: chain.into(),
            rule_handle: handle,
            verdict,
        };
        use Family::*;
        let want: HashMap<VerdictKey, u64> = [
            (key(5353, Inet, "fw", "input", None, NF_ACCEPT), 2),
            (key(5353, Ipv4, "filter", "INPUT", Some(2), NF_DROP), 2),
            (key(6001, Inet, "fw", "input", None, NF_ACCEPT), 2),
            (key(6001, Ipv4, "filter", "OVERLAY", Some(5), NF_DROP), 2),
            (key(7000, Inet, "fw", "input", Some(2), NF_DROP), 2),
            (key(7002, Inet, "fw", "input", Some(3), NF_ACCEPT), 2),
            (key(7002, Ipv4, "filter", "INPUT", None, NF_ACCEPT), 2),
            (key(7003, Inet, "fw", "input", None, NF_ACCEPT), 2),
            (key(7003, Ipv4, "filter", "INPUT", None, NF_ACCEPT), 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(v.counts(), &want);
        assert_eq!(v.take(), want);
        assert!(v.counts().is_empty());
        // Nothing is left waiting for a verdict.
        assert!(v.open.is_empty());
    }

    #[test]
    fn verdicts_fill_the_vni_of_vxlan_packets() {
        // A VXLAN packet's outer headers, as a trace event carries them (the
        // transport header's 20 bytes hold UDP and VXLAN, not the inner frame).
        let mut nh = vec![0x45, 0, 0, 100, 0, 1, 0, 0, 64, 17, 0, 0];
        nh.extend_from_slice(&A);
        nh.extend_from_slice(&B);
        let mut th = vec![0x9c, 0x40, 0x12, 0xb5, 0, 80, 0, 0];
        th.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0x92, 0, 2, 0, 0, 0]);
        let mut ports = [0; MAX_VXLAN_PORTS];
        ports[0] = 4789;
        let id = flow_of(2, &nh, &th, &ports).unwrap();
        assert_eq!(id.vni, tracer_ebpf::VNI_PRESENT | 4242);
        assert_eq!((id.outer.dport, id.inner), (4789, Tuple::default()));
    }

    #[test]
    fn flows_from_cut_headers() {
        let none = [0; MAX_VXLAN_PORTS];
        // IPv6 first fragment: the fragment header is past the 40 bytes given.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 0, 44, 64];
        v6.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let id = flow_of(10, &v6, &[0x13, 0x88, 0x13, 0x89], &none).unwrap();
        assert_eq!(
            (id.outer.family, id.outer.proto, id.outer.flags),
            (FAMILY_IPV6, 44, 0)
        );
        assert_eq!(id.outer.dst[15], 2);
        // Plain IPv6 UDP: ports too.
        v6[6] = 17;
        let id = flow_of(10, &v6, &[0x13, 0x88, 0x13, 0x89, 0, 8, 0, 0], &none).unwrap();
        assert_eq!(
            (id.outer.proto, id.outer.sport, id.outer.dport),
            (17, 5000, 5001)
        );
        // IPv4 with 40 bytes of options: only 40 bytes of the 60 given, no ports.
        let mut v4 = vec![0x4f, 0, 0, 0, 0, 1, 0x20, 0, 64, 6, 0, 0];
        v4.extend_from_slice(&A);
        v4.extend_from_slice(&B);
        v4.resize(40, 1);
        let id = flow_of(2, &v4, &[0x13, 0x88, 0x13, 0x89], &none).unwrap();
        assert_eq!(
            (id.outer.proto, id.outer.flags, id.outer.dport),
            (6, TUPLE_FRAG_FIRST, 0)
        );
        // Not IP (ARP in a bridge table, or no header).
        assert_eq!(flow_of(3, &[0, 1, 8, 0], &[], &none), None);
        assert_eq!(flow_of(2, &[], &[], &none), None);
    }

    /// A trace message made by hand: `attrs` are (type, payload).
    fn message(family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (ty, v) in attrs {
            body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&ty.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&NFT_TRACE_MSG_TYPE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn decode_policy_drop_nested_flag_and_junk() {
        let verdict = {
            let mut v = Vec::new();
            v.extend_from_slice(&8u16.to_ne_bytes());
            v.extend_from_slice(&NFTA_VERDICT_CODE.to_ne_bytes());
            v.extend_from_slice(&(NF_DROP as u32).to_be_bytes());
            v
        };
        let m = message(
            10,
            &[
                (NFTA_TRACE_TABLE, b"filter\0".to_vec()),
                (NFTA_TRACE_CHAIN, b"INPUT\0".to_vec()),
                (NFTA_TRACE_TYPE, NFT_TRACETYPE_POLICY.to_be_bytes().to_vec()),
                (NFTA_TRACE_POLICY, (NF_DROP as u32).to_be_bytes().to_vec()),
                (NFTA_TRACE_ID, 7u32.to_be_bytes().to_vec()),
            ],
        );
        let ev = &decode(&m)[0];
        assert_eq!(
            (ev.family, ev.kind, ev.verdict, ev.terminal_verdict(), ev.id),
            (
                Some(Family::Ipv6),
                TraceKind::Policy,
                Some(NF_DROP),
                Some(NF_DROP),
                7
            )
        );
        // Nested attribute with NLA_F_NESTED set; a queue verdict with its queue number.
        let queue = ((5u32 << 16) | NF_QUEUE as u32).to_be_bytes();
        let mut nested = verdict.clone();
        nested[4..8].copy_from_slice(&queue);
        let m = message(
            2,
            &[
                (NFTA_TRACE_TYPE, NFT_TRACETYPE_RULE.to_be_bytes().to_vec()),
                (NFTA_TRACE_VERDICT | 0x8000, nested),
                (NFTA_TRACE_RULE_HANDLE, 9u64.to_be_bytes().to_vec()),
                (NFTA_TRACE_ID, 8u32.to_be_bytes().to_vec()),
            ],
        );
        let ev = &decode(&m)[0];
        assert_eq!(
            (ev.rule_handle, ev.terminal_verdict()),
            (Some(9), Some(NF_QUEUE))
        );
        assert_eq!(verdict_name(ev.verdict.unwrap()), "queue");
        // Truncated, another message type, no type attribute: skipped.
        assert!(decode(&m[..m.len() - 3]).is_empty());
        let mut other = m.clone();
        other[4] = 0x12;
        assert!(decode(&other).is_empty());
        assert!(decode(&message(2, &[(NFTA_TRACE_ID, 1u32.to_be_bytes().to_vec())])).is_empty());
        assert!(decode(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn verdict_names() {
        for (c, n) in [
            (NF_DROP, "drop"),
            (NF_ACCEPT, "accept"),
            (NFT_CONTINUE, "continue"),
            (NFT_JUMP, "jump"),
            (NFT_GOTO, "goto"),
            (NFT_RETURN, "return"),
            (NFT_BREAK, "break"),
        ] {
            assert_eq!(verdict_name(c), n);
        }
    }

    #[test]
    fn ruleset_of_the_trace_table() {
        assert_eq!(
            trace_ruleset("tracer_42", "udp dport 4789"),
            "table inet tracer_42\n\
             delete table inet tracer_42\n\
             table inet tracer_42 {\n\
             \tchain pre {\n\
             \t\ttype filter hook prerouting priority -350; policy accept;\n\
             \t\tudp dport 4789 meta nftrace set 1\n\
             \t}\n\
             \tchain out {\n\
             \t\ttype filter hook output priority -350; policy accept;\n\
             \t\tudp dport 4789 meta nftrace set 1\n\
             \t}\n\
             }\n"
        );
        assert!(trace_ruleset("t", "").contains("\t\tmeta nftrace set 1\n"));
    }

    #[test]
    fn filters_that_would_escape_the_rule_are_refused() {
        assert!(check_filter("udp dport { 53, 5353 } ip saddr 10.0.0.1").is_ok());
        for bad in [
            "udp dport 53; flush ruleset",
            "tcp dport 1 }\n}\nflush ruleset",
            "udp dport 53 # x",
            "udp dport { 53",
        ] {
            let e = check_filter(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("bad --explain filter '{bad}': ")),
                "{e}"
            );
        }
    }

    #[test]
    fn nft_errors_without_their_location() {
        let stderr = "/dev/stdin:6:7-12: Error: syntax error, unexpected string\n\
            \t\tudp dportt 53 meta nftrace set 1\n\t\t    ^^^^^^\n";
        assert_eq!(first_error(stderr), "syntax error, unexpected string");
        assert_eq!(
            first_error("Error: Could not process rule: Operation not permitted\n"),
            "Could not process rule: Operation not permitted"
        );
        assert_eq!(first_error("something else\n"), "something else");
    }

    #[test]
    fn stale_tables_are_dead_pids_of_inet_tracer_tables() {
        let me = std::process::id();
        let list = format!(
            "table ip filter\ntable inet tracer_999999\ntable inet tracer_1\n\
             table ip tracer_999998\ntable inet tracer_x1\ntable inet tracer_\n\
             table inet tracer_{me}\ntable inet fw\ntable inet tracer_999997\n"
        );
        // Pid 1 is alive; the others are not.
        let got = stale_tables(&list, |pid| pid == 1);
        assert_eq!(got, ["tracer_999999", "tracer_999997"]);
    }
}
