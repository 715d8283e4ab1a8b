//! Names of drop reasons, from the running kernel's BTF (`enum
//! skb_drop_reason` changes between kernels), with a plain-language hint for
//! the common ones.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Result, anyhow, bail};
use btf_rs::Btf;
use tracer_ebpf::REASON_ABSENT;

use crate::sys::btf::enum_values;

pub struct Reasons {
    /// Value -> name without the `SKB_DROP_REASON_` prefix.
    names: BTreeMap<u32, String>,
    /// `SKB_CONSUMED`: a free that is not a drop ([`REASON_ABSENT`] on
    /// kernels without it, such as 6.1, where such frees never reach kfree_skb).
    pub consumed: u32,
    /// `SKB_NOT_DROPPED_YET` ([`REASON_ABSENT`] if absent).
    pub not_dropped: u32,
}

const PREFIX: &str = "SKB_DROP_REASON_";

/// Why `--reason` cannot work on a kernel without drop reasons.
pub const NO_REASONS: &str = "this kernel has no drop reasons (no enum skb_drop_reason in its \
                              BTF; Linux >= 5.17 has them): drops are shown with the kernel \
                              function that dropped them, and reason null";

impl Reasons {
    /// The kernel's drop reasons; `None` if it has none (before Linux 5.17).
    pub fn from_btf(btf: &Btf) -> Option<Self> {
        enum_values(btf, "skb_drop_reason")
            .ok()
            .map(Self::from_values)
    }

    pub fn from_values(values: Vec<(String, u64)>) -> Self {
        let mut names = BTreeMap::new();
        let (mut consumed, mut not_dropped) = (None, None);
        for (name, value) in values {
            let value = value as u32;
            match name.as_str() {
                "SKB_CONSUMED" => consumed = Some(value),
                "SKB_NOT_DROPPED_YET" => not_dropped = Some(value),
                // Bounds and masks, not reasons.
                "SKB_DROP_REASON_MAX" | "SKB_DROP_REASON_SUBSYS_MASK" => {}
                _ => {
                    let short = name.strip_prefix(PREFIX).unwrap_or(&name);
                    names.insert(value, short.to_string());
                }
            }
        }
        Reasons {
            names,
            consumed: consumed.unwrap_or(REASON_ABSENT),
            not_dropped: not_dropped.unwrap_or(REASON_ABSENT),
        }
    }

    /// The name of `value`, e.g. `NETFILTER_DROP`.
    pub fn name(&self, value: u32) -> String {
        match self.names.get(&value) {
            Some(n) => n.clone(),
            // Subsystems (mac80211, openvswitch...) put their own codes under the top 16 bits.
            None if value >> 16 != 0 => format!("SUBSYS_{}:{}", value >> 16, value & 0xffff),
            None => format!("UNKNOWN_{value}"),
        }
    }

    /// The value of reason `name`, in any case, with or without the `SKB_DROP_REASON_` prefix.
    pub fn value(&self, name: &str) -> Option<u32> {
        let upper = name.to_ascii_uppercase();
        let short = upper.strip_prefix(PREFIX).unwrap_or(&upper);
        self.names
            .iter()
            .find(|(_, n)| *n == short)
            .map(|(v, _)| *v)
    }

    pub fn all(&self) -> impl Iterator<Item = (u32, &str)> {
        self.names.iter().map(|(v, n)| (*v, n.as_str()))
    }
}

/// Which reasons to show: `--reason` (only these) and `--exclude-reason`.
#[derive(Debug, Default)]
pub struct ReasonFilter {
    include: Option<HashSet<u32>>,
    exclude: HashSet<u32>,
}

impl ReasonFilter {
    pub fn new(reasons: Option<&Reasons>, include: &[String], exclude: &[String]) -> Result<Self> {
        let Some(reasons) = reasons else {
            if include.is_empty() && exclude.is_empty() {
                return Ok(ReasonFilter::default());
            }
            bail!("--reason and --exclude-reason cannot be used: {NO_REASONS}");
        };
        let resolve = |names: &[String]| -> Result<HashSet<u32>> {
            names
                .iter()
                .map(|n| {
                    reasons.value(n).ok_or_else(|| {
                        anyhow!("unknown drop reason '{n}' on this kernel (see --list-reasons)")
                    })
                })
                .collect()
        };
        let include = if include.is_empty() {
            None
        } else {
            Some(resolve(include)?)
        };
        let exclude = resolve(exclude)?;
        if let Some(i) = &include
            && i.iter().all(|v| exclude.contains(v))
        {
            bail!("--reason and --exclude-reason leave no reason to show");
        }
        Ok(ReasonFilter { include, exclude })
    }

    pub fn allows(&self, reason: u32) -> bool {
        self.include.as_ref().is_none_or(|i| i.contains(&reason)) && !self.exclude.contains(&reason)
    }
}

/// What a drop usually means, for the common reasons; `location` refines
/// the vague ones, and is all there is on kernels without reasons (or
/// without the specific one: 6.1 frees expired fragments as NOT_SPECIFIED).
pub fn hint(reason: Option<&str>, location: &str) -> Option<&'static str> {
    match specific(reason) {
        Some(name) => reason_hint(name),
        None => hint_by_location(location).or_else(|| reason.and_then(reason_hint)),
    }
}

/// The reason, unless it says nothing (none on 5.10, NOT_SPECIFIED where
/// the kernel lacks the specific one): then only the location tells.
pub fn specific(reason: Option<&str>) -> Option<&str> {
    reason.filter(|r| *r != "NOT_SPECIFIED")
}

fn hint_by_location(location: &str) -> Option<&'static str> {
    let at = |f: &str| location.starts_with(f) && location[f.len()..].starts_with('+');
    if location.starts_with("__dev_forward_skb") {
        // __dev_forward_skb, or __dev_forward_skb2 where it was split in two.
        Some(
            "a veth (or other forwarding device) refused it: larger than the receiving end's \
             MTU, or that end is down",
        )
    } else if at("nf_hook_slow") {
        reason_hint("NETFILTER_DROP")
    } else if reassembly_failure(location) {
        Some("IP reassembly failed: some fragments never arrived, or came too late")
    } else {
        None
    }
}

/// Kernel functions that free fragments when reassembly fails: what a
/// FRAG_REASM_TIMEOUT or FRAG_TOO_FAR drop is on kernels without reasons.
pub fn reassembly_failure(location: &str) -> bool {
    [
        "ip_expire",
        "ip6_frag_expire",
        "inet_frag_rbtree_purge",
        "inet_frag_destroy",
    ]
    .iter()
    .any(|f| location.starts_with(f) && location[f.len()..].starts_with('+'))
}

/// What a drop reason usually means, for the common ones.
pub fn reason_hint(name: &str) -> Option<&'static str> {
    Some(match name {
        "NOT_SPECIFIED" => "freed as a drop without a reason recorded (kfree_skb)",
        "NO_SOCKET" => "nothing listens on the destination port",
        "NETFILTER_DROP" => "a netfilter (iptables/nftables) rule dropped it",
        "OTHERHOST" => "addressed to another host's MAC address",
        "IP_RPFILTER" => {
            "reverse-path filter: the source is not routed back through this interface"
        }
        "IP_NOROUTE" => "no route to the destination",
        "IP_INHDR" | "IP_CSUM" => "bad IP header or checksum",
        "UDP_CSUM" | "TCP_CSUM" => "bad L4 checksum",
        "PKT_TOO_SMALL" => "shorter than its headers claim",
        "PKT_TOO_BIG" => "larger than the MTU and could not be fragmented (DF set, or GSO)",
        "FRAG_REASM_TIMEOUT" => "IP reassembly timed out: some fragments never arrived",
        "FRAG_TOO_FAR" => "IP reassembly gave up: fragments too far apart (ipfrag_max_dist)",
        "DUP_FRAG" => "duplicate IP fragment",
        "NEIGH_FAILED" => "no ARP/ND answer for the next hop",
        "NEIGH_QUEUEFULL" => "too many packets waiting for ARP/ND resolution",
        "QDISC_DROP" => "the queueing discipline dropped it (queue full or policy)",
        "TC_INGRESS" | "TC_EGRESS" | "TC_DROP" => "a tc filter or BPF program dropped it",
        "SOCKET_RCVBUFF" => "the socket's receive buffer was full",
        "SOCKET_FILTER" => "a socket filter (BPF) dropped it",
        "PROTO_MEM" => "protocol memory limit reached",
        "TCP_INVALID_SEQUENCE" | "TCP_OLD_DATA" | "TCP_OVERWINDOW" => {
            "TCP segment outside the window"
        }
        "TCP_RESET" => "TCP connection reset",
        "XFRM_POLICY" => "IPsec policy rejected it",
        "IP_NOPROTO" => "no handler for this IP protocol",
        "IPV6DISABLED" => "IPv6 is disabled on the device",
        "DEV_READY" => "the device is down or not ready",
        "FULL_RING" => "the device's queue was full",
        "UNICAST_IN_L2_MULTICAST" => "IP unicast inside an L2 multicast/broadcast frame",
        "BRIDGE_INGRESS_STP_STATE" => "the bridge port is not forwarding (STP state)",
        "VXLAN_INVALID_HDR" => "malformed VXLAN header",
        "VXLAN_VNI_NOT_FOUND" => "no VXLAN device for this VNI",
        "VXLAN_NO_REMOTE" => "no VXLAN remote (FDB entry) for the destination",
        "MAC_INVALID_SOURCE" => "invalid source MAC address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob holding one enum, as the kernel would encode it.
    fn btf_with_enum(name: &str, members: &[(&str, u32)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut add = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut types = Vec::new();
        let name_off = add(name);
        types.extend(name_off.to_le_bytes());
        // info: kind 6 (BTF_KIND_ENUM) in bits 24-28, vlen in the low 16 bits.
        types.extend(((6u32 << 24) | members.len() as u32).to_le_bytes());
        types.extend(4u32.to_le_bytes());
        for (n, v) in members {
            types.extend(add(n).to_le_bytes());
            types.extend(v.to_le_bytes());
        }
        let mut blob = Vec::new();
        blob.extend(0xeb9fu16.to_le_bytes());
        blob.push(1); // version
        blob.push(0); // flags
        blob.extend(24u32.to_le_bytes()); // header length
        blob.extend(0u32.to_le_bytes()); // type offset
        blob.extend((types.len() as u32).to_le_bytes());
        blob.extend((types.len() as u32).to_le_bytes()); // string offset
        blob.extend((strings.len() as u32).to_le_bytes());
        blob.extend(types);
        blob.extend(strings);
        blob
    }

    fn sample() -> Reasons {
        let blob = btf_with_enum(
            "skb_drop_reason",
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                // Deliberately not the value of today's kernels.
                ("SKB_DROP_REASON_NETFILTER_DROP", 77),
                ("SKB_DROP_REASON_MAX", 78),
                ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff0000),
            ],
        );
        Reasons::from_btf(&Btf::from_bytes(&blob).unwrap()).unwrap()
    }

    #[test]
    fn names_come_from_the_btf_given() {
        let r = sample();
        assert_eq!(r.consumed, 1);
        assert_eq!(r.not_dropped, 0);
        assert_eq!(r.name(77), "NETFILTER_DROP");
        assert_eq!(r.name(3), "NO_SOCKET");
        assert_eq!(r.name(12), "UNKNOWN_12");
        assert_eq!(r.name(0x0003_0005), "SUBSYS_3:5");
        assert_eq!(r.value("netfilter_drop"), Some(77));
        assert_eq!(r.value("SKB_DROP_REASON_NO_SOCKET"), Some(3));
        assert_eq!(r.value("MAX"), None);
        let all: Vec<_> = r.all().collect();
        assert_eq!(
            all,
            [
                (2, "NOT_SPECIFIED"),
                (3, "NO_SOCKET"),
                (77, "NETFILTER_DROP")
            ]
        );
    }

    #[test]
    fn filters() {
        let r = sample();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let all = ReasonFilter::new(Some(&r), &[], &[]).unwrap();
        assert!(all.allows(2) && all.allows(77) && all.allows(12345));
        let quiet = ReasonFilter::new(Some(&r), &[], &s(&["not_specified"])).unwrap();
        assert!(!quiet.allows(2) && quiet.allows(77));
        let only = ReasonFilter::new(Some(&r), &s(&["NETFILTER_DROP", "no_socket"]), &[]).unwrap();
        assert!(only.allows(77) && only.allows(3) && !only.allows(2));
        let e = ReasonFilter::new(Some(&r), &s(&["NOPE"]), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown drop reason 'NOPE' on this kernel (see --list-reasons)"
        );
        assert!(ReasonFilter::new(Some(&r), &s(&["no_socket"]), &s(&["no_socket"])).is_err());
    }

    #[test]
    fn a_kernel_without_reasons_has_none_and_refuses_reason_filters() {
        let blob = btf_with_enum("some_other_enum", &[("A", 1)]);
        assert!(Reasons::from_btf(&Btf::from_bytes(&blob).unwrap()).is_none());
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(ReasonFilter::new(None, &[], &[]).unwrap().allows(7));
        let e = ReasonFilter::new(None, &s(&["NETFILTER_DROP"]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("this kernel has no drop reasons"), "{e}");
        assert!(ReasonFilter::new(None, &[], &s(&["NOT_SPECIFIED"])).is_err());
    }

    /// 6.1 has reasons but no SKB_CONSUMED: nothing is skipped as consumed.
    #[test]
    fn a_kernel_without_consumed_skips_nothing() {
        let r = Reasons::from_values(vec![
            ("SKB_NOT_DROPPED_YET".into(), 0),
            ("SKB_DROP_REASON_NOT_SPECIFIED".into(), 2),
        ]);
        assert_eq!((r.consumed, r.not_dropped), (REASON_ABSENT, 0));
        assert_eq!(r.name(2), "NOT_SPECIFIED");
    }

    /// The kernel's own table of reason names, in the kfree_skb tracepoint's format.
    fn tracefs_reason_value(name: &str) -> u32 {
        let fmt = std::fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format")
            .expect("tracefs mounted (cargo xtask setup mounts it)");
        let needle = format!("\"{name}\" }}");
        let at = fmt.find(&needle).expect("reason in format");
        let open = fmt[..at].rfind('{').unwrap();
        fmt[open + 1..at]
            .trim()
            .trim_end_matches(',')
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn running_kernel_values_match_the_kernels_own_table() {
        let btf = crate::sys::btf::load(std::path::Path::new(crate::sys::btf::VMLINUX)).unwrap();
        let r = Reasons::from_btf(&btf).expect("this kernel has drop reasons");
        for name in [
            "NETFILTER_DROP",
            "NO_SOCKET",
            "NOT_SPECIFIED",
            "FRAG_REASM_TIMEOUT",
        ] {
            assert_eq!(r.value(name), Some(tracefs_reason_value(name)), "{name}");
        }
    }
}
