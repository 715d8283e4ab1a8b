//! The typed values rows are made of: where a packet was seen (direction),
//! and the netfilter hook, table and family of a verdict. The eBPF side
//! stores them as small numbers; these types are the only place that turns
//! numbers into names and back.

use std::fmt;

use tracer_ebpf::{DIR_EGRESS, DIR_INGRESS, DIR_SENT, hook, table};

/// Which way a packet crossed a device, or that the stack sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    // Declared in this order so that rows sort egress first, as they always did.
    Egress,
    Ingress,
    /// An ICMP error the namespace's stack sent (`icmp_send`).
    Sent,
}

impl Direction {
    pub fn from_raw(dir: u8) -> Direction {
        match dir {
            DIR_INGRESS => Direction::Ingress,
            DIR_EGRESS => Direction::Egress,
            _ => Direction::Sent,
        }
    }

    pub fn raw(self) -> u8 {
        match self {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
            Direction::Sent => DIR_SENT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
            Direction::Sent => "sent",
        }
    }
}

/// A netfilter hook. The first five are `enum nf_inet_hooks`; the netdev
/// family adds ingress and egress, which only rules name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
    Egress,
}

impl Hook {
    /// The hooks IPv4 and IPv6 packets pass, in `nf_inet_hooks` order.
    pub const INET: [Hook; 5] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    /// From an `nf_inet_hooks` number.
    pub fn from_raw(h: u8) -> Option<Hook> {
        Some(match h {
            hook::PRE_ROUTING => Hook::Prerouting,
            hook::LOCAL_IN => Hook::Input,
            hook::FORWARD => Hook::Forward,
            hook::LOCAL_OUT => Hook::Output,
            hook::POST_ROUTING => Hook::Postrouting,
            _ => return None,
        })
    }

    /// The `nf_inet_hooks` number; `None` for the netdev hooks.
    pub fn raw(self) -> Option<u8> {
        Some(match self {
            Hook::Prerouting => hook::PRE_ROUTING,
            Hook::Input => hook::LOCAL_IN,
            Hook::Forward => hook::FORWARD,
            Hook::Output => hook::LOCAL_OUT,
            Hook::Postrouting => hook::POST_ROUTING,
            Hook::Ingress | Hook::Egress => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    /// From nft's lower-case name or iptables' built-in chain name.
    pub fn from_name(name: &str) -> Option<Hook> {
        Some(match name.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            "ingress" => Hook::Ingress,
            "egress" => Hook::Egress,
            _ => return None,
        })
    }
}

/// A netfilter table, as the priority band its chains run in: iptables'
/// tables register at these priorities, and nftables chains of the same
/// priority decide at the same point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Raw,
    Mangle,
    Nat,
    Security,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Filter,
        Table::Raw,
        Table::Mangle,
        Table::Nat,
        Table::Security,
    ];

    pub fn raw(self) -> u8 {
        match self {
            Table::Filter => table::FILTER,
            Table::Raw => table::RAW,
            Table::Mangle => table::MANGLE,
            Table::Nat => table::NAT,
            Table::Security => table::SECURITY,
        }
    }

    pub fn from_raw(t: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|x| x.raw() == t)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Security => "security",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The table's priority at `hook` (`NF_IP_PRI_*`, the same for IPv6).
    pub fn priority(self, hook: Hook) -> i32 {
        match self {
            Table::Raw => -300,
            Table::Mangle => -150,
            Table::Nat => match hook {
                Hook::Prerouting | Hook::Output => -100,
                _ => 100,
            },
            Table::Filter => 0,
            Table::Security => 50,
        }
    }

    /// The table whose band a chain of priority `p` at `hook` falls in.
    pub fn at_priority(p: i32, hook: Hook) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.priority(hook) == p)
    }

    /// The hooks where a chain of this table's priority is looked for.
    /// iptables registers filter at input, forward and output only, but
    /// nftables chains of filter priority may be at any hook.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            Table::Filter | Table::Mangle => &Hook::INET,
            Table::Raw => &[Hook::Prerouting, Hook::Output],
            Table::Nat => &[
                Hook::Prerouting,
                Hook::Output,
                Hook::Input,
                Hook::Postrouting,
            ],
            Table::Security => &[Hook::Input, Hook::Forward, Hook::Output],
        }
    }

    /// The hooks iptables (legacy or nft) registers the table at.
    pub fn iptables_hooks(self) -> &'static [Hook] {
        match self {
            Table::Filter => &[Hook::Input, Hook::Forward, Hook::Output],
            other => other.hooks(),
        }
    }
}

/// The IP version of a packet netfilter saw (`NFPROTO_IPV4`/`NFPROTO_IPV6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    Ipv4,
    Ipv6,
}

impl IpFamily {
    pub const BOTH: [IpFamily; 2] = [IpFamily::Ipv4, IpFamily::Ipv6];

    /// `NFPROTO_*`.
    pub fn nfproto(self) -> u8 {
        match self {
            IpFamily::Ipv4 => NFPROTO_IPV4,
            IpFamily::Ipv6 => NFPROTO_IPV6,
        }
    }

    pub fn from_nfproto(pf: u8) -> Option<IpFamily> {
        match pf {
            NFPROTO_IPV4 => Some(IpFamily::Ipv4),
            NFPROTO_IPV6 => Some(IpFamily::Ipv6),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
        }
    }
}

pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Direction, Hook, Table, IpFamily);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for h in Hook::INET {
            assert_eq!(Hook::from_raw(h.raw().unwrap()), Some(h));
            assert_eq!(Hook::from_name(h.as_str()), Some(h));
        }
        for t in Table::ALL {
            assert_eq!(Table::from_raw(t.raw()), Some(t));
            assert_eq!(Table::from_name(t.as_str()), Some(t));
        }
        for f in IpFamily::BOTH {
            assert_eq!(IpFamily::from_nfproto(f.nfproto()), Some(f));
        }
        for d in [Direction::Ingress, Direction::Egress, Direction::Sent] {
            assert_eq!(Direction::from_raw(d.raw()), d);
        }
        assert_eq!(Hook::from_name("INPUT"), Some(Hook::Input));
    }

    #[test]
    fn priorities_name_their_band() {
        assert_eq!(Table::Nat.priority(Hook::Prerouting), -100);
        assert_eq!(Table::Nat.priority(Hook::Postrouting), 100);
        assert_eq!(Table::at_priority(100, Hook::Input), Some(Table::Nat));
        assert_eq!(Table::at_priority(-100, Hook::Input), None);
        assert_eq!(Table::at_priority(50, Hook::Forward), Some(Table::Security));
        assert_eq!(Table::at_priority(7, Hook::Forward), None);
    }

    #[test]
    fn egress_sorts_first() {
        assert!(Direction::Egress < Direction::Ingress);
    }
}
