//! Netfilter rules: which iptables/nftables rule counted, accepted or dropped a packet.
#![allow(dead_code)] // Until integration nothing calls this module; this goes away then.

pub mod rules;
