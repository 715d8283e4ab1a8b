//! Noise a busy host makes that is no problem: drops the kernel counts as
//! drops but that lose nothing, and IPv6 link-local control traffic. By
//! default the lines and JSON show them as one summarised row per report
//! (`--show-benign` shows them in full).

use std::net::IpAddr;

use tracer_ebpf::FlowId;

use crate::{
    analysis::paths,
    output::{DropRow, Endpoints, Report},
};

/// Why a drop is benign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benign {
    /// `NO_SOCKET` at `ping_rcv`: ping's raw socket received the echo
    /// reply; the kernel frees the original, which no ping socket wanted.
    /// Kernels where `ping_rcv` hands its reason back (6.1) free it in
    /// `icmp_rcv` or `icmpv6_rcv`, where only `ping_rcv` gives `NO_SOCKET`.
    EchoReply,
    /// `QUEUE_PURGE` of 0 bytes: a closing TCP socket frees its empty
    /// queues (Swarm's gossip on 7946 does it at every close).
    EmptyQueuePurge,
    /// IPv6 link-local control traffic (neighbour discovery, router
    /// solicitations, MLD): from `fe80::/10` or `::`, or to `ff02::/16`.
    Ipv6LinkLocal,
}

/// IPv6 link-local control traffic: the conversation is from `fe80::/10`
/// or `::`, or to a link-local multicast group.
pub fn ipv6_link_local(id: &FlowId) -> bool {
    let e = Endpoints::of(&paths::conversation(id));
    let from = matches!(e.src, Some(IpAddr::V6(a)) if a.segments()[0] & 0xffc0 == 0xfe80 || a.is_unspecified());
    let to = matches!(e.dst, Some(IpAddr::V6(a)) if a.segments()[0] == 0xff02);
    from || to
}

/// A drop of `reason` at `location` (`function+0x..`) is an echo reply's
/// ([`Benign::EchoReply`]). Public for the tests that read JSON rows.
pub fn is_echo_reply(reason: Option<&str>, location: &str) -> bool {
    let at = |f: &str| {
        location
            .strip_prefix(f)
            .is_some_and(|rest| rest.starts_with('+'))
    };
    reason == Some("NO_SOCKET") && (at("ping_rcv") || at("icmp_rcv") || at("icmpv6_rcv"))
}

/// Why drop `d` is benign, if it is.
pub fn classify(d: &DropRow) -> Option<Benign> {
    match d.reason.as_deref() {
        r if is_echo_reply(r, &d.location) => Some(Benign::EchoReply),
        Some("QUEUE_PURGE") if d.counts.bytes == 0 => Some(Benign::EmptyQueuePurge),
        _ if ipv6_link_local(&d.id) => Some(Benign::Ipv6LinkLocal),
        _ => None,
    }
}

/// What a report's summary row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BenignRow {
    /// Packets dropped for each reason of [`Benign`].
    pub echo_replies: u64,
    pub empty_queue_purges: u64,
    pub ipv6_link_local: u64,
    /// Flow and path rows of IPv6 link-local control traffic left out.
    pub rows_hidden: u64,
}

impl BenignRow {
    pub fn drops(&self) -> u64 {
        self.echo_replies + self.empty_queue_purges + self.ipv6_link_local
    }
}

/// Takes the benign drops and the IPv6 link-local rows out of `report`
/// into its summary row (none if there were none).
pub fn summarise(report: &mut Report) {
    let mut row = BenignRow::default();
    report.drops.retain(|d| {
        let n = d.counts.packets;
        match classify(d) {
            Some(Benign::EchoReply) => row.echo_replies += n,
            Some(Benign::EmptyQueuePurge) => row.empty_queue_purges += n,
            Some(Benign::Ipv6LinkLocal) => row.ipv6_link_local += n,
            None => return true,
        }
        false
    });
    let (flows, paths) = (report.flows.len(), report.paths.len());
    report.flows.retain(|f| !ipv6_link_local(&f.id));
    report.paths.retain(|p| !ipv6_link_local(&p.id));
    row.rows_hidden = (flows - report.flows.len() + paths - report.paths.len()) as u64;
    report.benign = (row != BenignRow::default()).then_some(row);
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{FAMILY_IPV4, FAMILY_IPV6, Tuple};

    use super::*;
    use crate::collectors::drops::DropCounts;

    fn tuple(family: u8, src: IpAddr, dst: IpAddr, proto: u8) -> Tuple {
        let bytes = |a: IpAddr| match a {
            IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            IpAddr::V6(v) => v.octets(),
        };
        Tuple {
            family,
            proto,
            src: bytes(src),
            dst: bytes(dst),
            ..Tuple::default()
        }
    }

    fn drop(reason: &str, location: &str, id: FlowId, packets: u64, bytes: u64) -> DropRow {
        DropRow {
            netns: "host".into(),
            iface: None,
            id,
            reason: Some(reason.into()),
            location: location.into(),
            fragment: None,
            counts: DropCounts { packets, bytes },
        }
    }

    fn v4(a: &str, b: &str) -> FlowId {
        FlowId {
            outer: tuple(FAMILY_IPV4, a.parse().unwrap(), b.parse().unwrap(), 1),
            ..FlowId::default()
        }
    }

    fn v6(a: &str, b: &str) -> FlowId {
        FlowId {
            outer: tuple(FAMILY_IPV6, a.parse().unwrap(), b.parse().unwrap(), 58),
            ..FlowId::default()
        }
    }

    #[test]
    fn benign_drops_are_told_from_real_ones() {
        let ping = v4("10.1.1.2", "10.1.1.1");
        assert_eq!(
            classify(&drop("NO_SOCKET", "ping_rcv+0x8c", ping, 5, 420)),
            Some(Benign::EchoReply)
        );
        // Debian 12's 6.1 frees it where ping_rcv returns to.
        for at in ["icmp_rcv+0x1b1", "icmpv6_rcv+0x2f4"] {
            assert_eq!(
                classify(&drop("NO_SOCKET", at, ping, 5, 420)),
                Some(Benign::EchoReply),
                "{at}"
            );
        }
        // There any other reason is a real drop.
        assert_eq!(
            classify(&drop("NOT_SPECIFIED", "icmp_rcv+0x1b1", ping, 5, 420)),
            None
        );
        // A UDP datagram to a closed port is a real NO_SOCKET.
        assert_eq!(
            classify(&drop("NO_SOCKET", "__udp4_lib_rcv+0x1a", ping, 5, 420)),
            None
        );
        assert_eq!(
            classify(&drop("NO_SOCKET", "ping_rcv2+0x8", ping, 5, 420)),
            None
        );
        assert_eq!(
            classify(&drop("QUEUE_PURGE", "tcp_v4_destroy_sock+0x9", ping, 2, 0)),
            Some(Benign::EmptyQueuePurge)
        );
        assert_eq!(classify(&drop("QUEUE_PURGE", "x+0x9", ping, 2, 120)), None);
        for (a, b) in [
            ("fe80::1", "fe80::2"),
            ("::", "ff02::16"),
            ("2001:db8::1", "ff02::2"),
        ] {
            assert_eq!(
                classify(&drop("IPV6DISABLED", "ip6_rcv_core+0x36f", v6(a, b), 1, 56)),
                Some(Benign::Ipv6LinkLocal),
                "{a} > {b}"
            );
        }
        assert_eq!(
            classify(&drop(
                "IPV6DISABLED",
                "ip6_rcv_core+0x36f",
                v6("2001:db8::1", "2001:db8::2"),
                1,
                56
            )),
            None
        );
    }

    #[test]
    fn summarised_into_one_row() {
        let mut r = Report {
            drops: vec![
                drop(
                    "NO_SOCKET",
                    "ping_rcv+0x8c",
                    v4("10.1.1.2", "10.1.1.1"),
                    5,
                    420,
                ),
                drop(
                    "NETFILTER_DROP",
                    "nft_do_chain+0x3e8",
                    v4("10.1.1.1", "10.1.1.2"),
                    10,
                    880,
                ),
                drop(
                    "IPV6DISABLED",
                    "ip6_rcv_core+0x36f",
                    v6("fe80::1", "ff02::2"),
                    3,
                    168,
                ),
            ],
            ..Report::default()
        };
        summarise(&mut r);
        assert_eq!(r.drops.len(), 1);
        assert_eq!(r.drops[0].reason.as_deref(), Some("NETFILTER_DROP"));
        let b = r.benign.unwrap();
        assert_eq!((b.echo_replies, b.ipv6_link_local, b.drops()), (5, 3, 8));
        let mut quiet = Report::default();
        summarise(&mut quiet);
        assert_eq!(quiet.benign, None);
    }
}
