//! Netfilter rules: which iptables or nftables rule counted, accepted or
//! dropped a flow's packets.
//!
//! Two independent parts, both working in the calling thread's network
//! namespace (call them through `netns::run_in`):
//!
//! **Passive rule counters** ([`snapshot`], [`rule`]): cheap, always on. Every rule of the
//! namespace with its packet and byte counters, from `iptables-save -c`,
//! `ip6tables-save -c` and `nft -a list ruleset`. Diffing two snapshots tells
//! which DROP/REJECT rules dropped packets in between, but not of which flow.
//!
//! ```ignore
//! let before = netns::run_in(&ns.path, snapshot_report)??;
//! for u in &before.unavailable { /* tell the user once: "{u.tool}: {u.reason}" */ }
//! // ... an interval later ...
//! let after = netns::run_in(&ns.path, snapshot)??;
//! for (rule, packets) in moved(&before.rules, &after) { /* rule.text dropped `packets` */ }
//! ```
//!
//! - [`snapshot()`]`() -> Result<Vec<Rule>>`: every rule with its counters; missing tools are skipped.
//! - [`snapshot_report`]`() -> Result<Snapshot>`: the same, plus which tools were unavailable.
//! - [`moved`]`(before, after) -> Vec<(Rule, u64)>`: DROP/REJECT rules whose counter moved, with the delta.
//! - [`lookup`]`(rules, family, table, chain, handle) -> Option<&Rule>`: the rule a trace event names.
//!
//! **Exact attribution** ([`trace`]): on demand (`--explain FILTER`), since
//! it costs a netlink message per traced packet and rule. A [`trace::TraceTable`]
//! sets `nftrace` on the packets matching the user's nft expression; a
//! [`trace::TraceReader`] receives the kernel's trace events; [`trace::Verdicts`]
//! folds them into packet counts per (flow, table, chain, rule handle, verdict).
//!
//! ```ignore
//! let (table, reader) = netns::run_in(&ns.path, || -> Result<_> {
//!     trace::remove_stale()?;                       // left by a killed run
//!     Ok((trace::TraceTable::create(filter)?, trace::TraceReader::open()?))
//! })??;
//! let reader = unsafe { tokio::io::unix::AsyncFd::register(reader) }?;
//! let mut verdicts = trace::Verdicts::new(vxlan_ports);
//! loop {
//!     let mut guard = reader.readable_mut().await?;
//!     verdicts.add(&guard.get_inner_mut().read()?); // reads until it would block
//!     guard.clear_ready();
//!     // each interval: for (key, packets) in verdicts.take() { lookup(...) }
//! }
//! drop(table);                                      // deletes it, from any thread
//! ```
//!
//! - [`trace::TraceTable::create`]`(filter) -> Result<TraceTable>`: `table inet tracer_<pid>` marking matching packets; dropped = deleted.
//! - [`trace::remove_stale`]`() -> Result<Vec<String>>`: deletes `inet tracer_<pid>` tables of dead pids.
//! - [`trace::TraceReader::open`]`() -> Result<TraceReader>`: non-blocking netlink socket (`AsRawFd`/`AsFd`).
//! - [`trace::TraceReader::read`]`(&mut self) -> Result<Vec<TraceEvent>>`: every event received so far.
//! - [`trace::TraceReader::overruns`]`(&self) -> u64`: times the kernel dropped events (socket buffer full).
//! - [`trace::decode`]`(buf) -> Vec<TraceEvent>`: the pure decoder behind `read`.
//! - [`trace::TraceEvent::flow`]`(&self, vxlan_ports) -> Option<FlowId>`: the flow from the event's headers.
//! - [`trace::Verdicts::new`]`(vxlan_ports)`, `add(&[TraceEvent])`, `counts()`, `take()`: the aggregation.
//!
//! What the kernel and the tools do that the integration must know:
//! - iptables-nft rules *are* nftables rules: trace events name them as table
//!   `filter` of family `ip`/`ip6`, chain `INPUT`, with the nftables handle;
//!   [`snapshot()`] gives iptables-nft rules that handle (matched by
//!   position in nft's listing), so [`lookup`] turns a trace event into
//!   the `-A INPUT ... -j DROP` text. iptables-legacy rules never appear in traces.
//! - REJECT (iptables `-j REJECT`, nft `reject`) shows in traces as a rule
//!   event with verdict `NF_DROP`; only the rule text tells it was a reject.
//! - A verdict from a user chain names that chain (`OVERLAY`), not the base
//!   chain (`INPUT`) that jumped to it.
//! - Trace ids repeat: consecutive packets of a flow often get the same id
//!   (it hashes the skb address, which is reused). [`trace::Verdicts`] groups
//!   events in arrival order and is not fooled by that.
//! - Headers are only on the first event of each base chain a packet enters,
//!   at most 40 bytes of network and 20 of transport header: flows of IPv6
//!   packets with extension headers (fragments) have no ports.
//! - nft only warns about tables "managed by iptables-nft" (on stderr) when
//!   they use xtables extensions; such tables are recognised from
//!   iptables-save's output as well.
//! - iptables-nft-save 1.8.9 silently misprints rules it cannot translate
//!   (e.g. a native `ip saddr { a, b } drop` added to `ip filter INPUT` shows
//!   as `-A INPUT -j DROP`); nothing tells them apart.

mod iptables;
mod nft;
pub mod rule;
pub mod snapshot;
pub mod trace;
mod words;

pub use rule::{Family, Rule, Source, Verdict, lookup, moved, reach};
pub use snapshot::{Snapshot, Unavailable, snapshot, snapshot_report};
#[cfg(test)]
mod tests;
