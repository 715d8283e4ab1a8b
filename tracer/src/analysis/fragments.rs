//! Per-flow fragment accounting, derived from the flow and drop rows of one
//! report: how many datagrams a flow sent in fragments, how many fragments,
//! which were lost on the way and which datagrams never got reassembled.

use std::collections::BTreeMap;

use tracer_ebpf::FlowId;

use crate::{
    collectors::drops::reasons::{reassembly_failure, specific},
    model::Direction,
    output::{DropRow, FlowRow},
};

/// Drop reasons that mean "reassembly failed", as opposed to a fragment lost on its way.
const REASSEMBLY_FAILURES: [&str; 2] = ["FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR"];
/// A duplicate fragment being dropped loses nothing.
const NOT_A_LOSS: [&str; 1] = ["DUP_FRAG"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragRow {
    /// Where the flow's fragments were counted (the hop that saw the most).
    pub netns: String,
    pub iface: String,
    pub dir: Direction,
    pub id: FlowId,
    /// Datagrams sent in fragments (first fragments).
    pub datagrams: u64,
    /// `datagrams - datagrams_lost`.
    pub reassembled: u64,
    /// Datagrams whose first fragment was dropped, in transit or when reassembly failed.
    pub datagrams_lost: u64,
    /// Fragments sent (first and non-first).
    pub fragments: u64,
    /// Fragments dropped before reaching reassembly (any reason but reassembly failures).
    pub fragments_lost: u64,
    /// Fragments thrown away because reassembly failed (timeout, too far).
    pub reassembly_failed: u64,
}

pub fn frag_rows(flows: &[FlowRow], drops: &[DropRow]) -> Vec<FragRow> {
    let mut rows: BTreeMap<FlowId, FragRow> = BTreeMap::new();
    for f in flows {
        let c = &f.counts;
        let fragments = c.frags_first + c.frags_rest;
        if fragments == 0 {
            continue;
        }
        let row = rows.entry(f.id).or_insert_with(|| FragRow {
            netns: f.netns.to_string(),
            iface: f.iface.to_string(),
            dir: f.dir,
            id: f.id,
            datagrams: 0,
            reassembled: 0,
            datagrams_lost: 0,
            fragments: 0,
            fragments_lost: 0,
            reassembly_failed: 0,
        });
        // Every hop sees the same fragments again: the first one saw them all.
        if fragments > row.fragments {
            (row.netns, row.iface, row.dir) = (f.netns.to_string(), f.iface.to_string(), f.dir);
            row.fragments = fragments;
        }
        row.datagrams = row.datagrams.max(c.frags_first);
    }
    for d in drops {
        let Some(fragment) = d.fragment else {
            continue;
        };
        let Some(row) = rows.get_mut(&d.id) else {
            continue;
        };
        let n = d.counts.packets;
        let failed = match specific(d.reason.as_deref()) {
            Some(r) if NOT_A_LOSS.contains(&r) => continue,
            Some(r) => REASSEMBLY_FAILURES.contains(&r),
            // 6.1 frees expired fragments as NOT_SPECIFIED, 5.10 has no
            // reasons: where it was dropped says it.
            None => reassembly_failure(&d.location),
        };
        if failed {
            row.reassembly_failed += n;
        } else {
            row.fragments_lost += n;
        }
        if fragment == "first" {
            row.datagrams_lost += n;
        }
    }
    rows.into_values()
        .map(|mut r| {
            r.reassembled = r.datagrams.saturating_sub(r.datagrams_lost);
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::{FAMILY_IPV4, TUPLE_PORTS, Tuple};

    use super::*;
    use crate::{collectors::drops::DropCounts, collectors::flows::Counts, model::Direction};

    fn id(dport: u16) -> FlowId {
        FlowId {
            outer: Tuple {
                family: FAMILY_IPV4,
                proto: 17,
                dport,
                flags: TUPLE_PORTS,
                ..Tuple::default()
            },
            ..FlowId::default()
        }
    }

    fn hop(ns: &str, dir: &'static str, dport: u16, first: u64, rest: u64) -> FlowRow {
        let dir = if dir == "ingress" {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        FlowRow {
            netns: ns.into(),
            iface: "ul0".into(),
            dir,
            id: id(dport),
            counts: Counts {
                packets: first + rest,
                frags_first: first,
                frags_rest: rest,
                ..Counts::default()
            },
        }
    }

    fn drop(ns: &str, dport: u16, fragment: &'static str, reason: &str, n: u64) -> DropRow {
        DropRow {
            netns: ns.into(),
            iface: Some("x".into()),
            id: id(dport),
            reason: Some(reason.into()),
            location: "f+0x1".into(),
            fragment: Some(fragment),
            counts: DropCounts {
                packets: n,
                bytes: 0,
            },
        }
    }

    /// Scenario 3: 10 datagrams in 2 fragments; a middlebox drops every
    /// non-first fragment; the receiver's reassembly times out on every first.
    #[test]
    fn middlebox_drops_non_first_fragments() {
        let flows = [
            hop("a", "egress", 4789, 10, 10),
            hop("r", "ingress", 4789, 10, 10),
            hop("b", "ingress", 4789, 10, 0),
        ];
        let drops = [
            drop("r", 4789, "rest", "NETFILTER_DROP", 10),
            drop("b", 4789, "first", "FRAG_REASM_TIMEOUT", 10),
        ];
        let rows = frag_rows(&flows, &drops);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.netns.as_str(), r.dir.as_str()), ("a", "egress"));
        assert_eq!((r.datagrams, r.fragments), (10, 20));
        assert_eq!((r.fragments_lost, r.reassembly_failed), (10, 10));
        assert_eq!((r.datagrams_lost, r.reassembled), (10, 0));
    }

    /// 6.1 has drop reasons but frees expired fragments as NOT_SPECIFIED
    /// (5.10 has no reasons at all): the function that freed them says it.
    #[test]
    fn reassembly_failure_by_location_without_the_reason() {
        let flows = [hop("a", "egress", 4789, 4, 4)];
        for reason in [Some("NOT_SPECIFIED"), None] {
            let expired = |location: &str| DropRow {
                reason: reason.map(Into::into),
                location: location.into(),
                ..drop("b", 4789, "first", "", 2)
            };
            let drops = [
                expired("ip_expire+0x1c4/0x2a0"),
                expired("ip_rcv_core+0x10/0x300"),
            ];
            let r = &frag_rows(&flows, &drops)[0];
            assert_eq!(
                (r.reassembly_failed, r.fragments_lost),
                (2, 2),
                "{reason:?}"
            );
            assert_eq!((r.datagrams_lost, r.reassembled), (4, 0), "{reason:?}");
        }
    }

    #[test]
    fn no_loss_and_unrelated_rows() {
        let flows = [hop("a", "egress", 1, 5, 10), hop("a", "egress", 2, 0, 0)];
        let drops = [
            drop("b", 1, "rest", "DUP_FRAG", 3),
            // Not a fragment of a fragmented flow seen here.
            drop("b", 9, "first", "NETFILTER_DROP", 1),
        ];
        let rows = frag_rows(&flows, &drops);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.datagrams, r.fragments, r.reassembled), (5, 15, 5));
        assert_eq!(
            (r.fragments_lost, r.datagrams_lost, r.reassembly_failed),
            (0, 0, 0)
        );
    }
}
