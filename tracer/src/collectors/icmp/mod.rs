//! ICMP error counters and what each kind of error is called.

use tracer_ebpf::FAMILY_IPV4;

use crate::collectors::tally::Accumulate;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IcmpCount(pub u64);

impl Accumulate for IcmpCount {
    fn add(&mut self, o: &Self) {
        self.0 += o.0;
    }
}

/// The name of an ICMP (`family` 4) or ICMPv6 error.
pub fn kind(family: u8, icmp_type: u8, code: u8) -> &'static str {
    if family == FAMILY_IPV4 {
        match (icmp_type, code) {
            (3, 0) => "net_unreachable",
            (3, 1) => "host_unreachable",
            (3, 2) => "protocol_unreachable",
            (3, 3) => "port_unreachable",
            (3, 4) => "frag_needed",
            (3, 9 | 10 | 13) => "admin_prohibited",
            (3, _) => "dest_unreachable",
            (11, 0) => "time_exceeded",
            (11, 1) => "reassembly_timeout",
            (12, _) => "parameter_problem",
            (4, _) => "source_quench",
            (5, _) => "redirect",
            _ => "other",
        }
    } else {
        match (icmp_type, code) {
            (1, 1) => "admin_prohibited",
            (1, 3) => "address_unreachable",
            (1, 4) => "port_unreachable",
            (1, _) => "dest_unreachable",
            (2, _) => "packet_too_big",
            (3, 0) => "time_exceeded",
            (3, 1) => "reassembly_timeout",
            (4, _) => "parameter_problem",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::FAMILY_IPV6;

    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(FAMILY_IPV4, 3, 4), "frag_needed");
        assert_eq!(kind(FAMILY_IPV4, 3, 3), "port_unreachable");
        assert_eq!(kind(FAMILY_IPV4, 11, 1), "reassembly_timeout");
        assert_eq!(kind(FAMILY_IPV4, 11, 0), "time_exceeded");
        assert_eq!(kind(FAMILY_IPV6, 2, 0), "packet_too_big");
        assert_eq!(kind(FAMILY_IPV6, 1, 4), "port_unreachable");
        assert_eq!(kind(FAMILY_IPV6, 3, 0), "time_exceeded");
    }
}
