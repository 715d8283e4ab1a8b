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

mod event;
mod reader;
mod table;
mod verdicts;

pub use event::{
    NF_ACCEPT, NF_DROP, NF_QUEUE, NF_REPEAT, NF_STOLEN, NFT_BREAK, NFT_CONTINUE, NFT_GOTO,
    NFT_JUMP, NFT_RETURN, TraceEvent, TraceKind, decode, verdict_name,
};
pub use reader::TraceReader;
pub use table::{TABLE_PREFIX, TraceTable, remove_stale};
pub use verdicts::{VerdictKey, Verdicts};

#[cfg(test)]
mod tests;
