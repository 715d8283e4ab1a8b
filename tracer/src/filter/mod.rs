//! One filter language for `--filter` and the live view's filter key, in the
//! spirit of pcap-filter, over the outer and inner headers of every row and
//! path:
//!
//! ```text
//! expr      := and (("or" | "||") and)*
//! and       := unary (("and" | "&&")? unary)*
//! unary     := ("not" | "!") unary | "(" expr ")" | primitive
//! primitive := ["inner" | "outer"] header-atom+
//!            | "vni" N | "netns" NAME | "iface" NAME | "reason" NAME
//! header-atom := ["src" | "dst"] ("host" ADDR | "net" ADDR/LEN | "port" N | "portrange" N-M)
//!            | "tcp" | "udp" | "icmp" | "icmp6" | "proto" N | "ip" | "ip6"
//! ```
//!
//! Header atoms written one after the other (`udp port 53`) must hold on one
//! and the same header. `outer` is the packet as it crossed the device (for
//! VXLAN, the underlay's); `inner` is the container's packet (for VXLAN, the
//! one it carries, else the packet itself); with neither, either will do.
//! A path matches through any of its hops: its namespaces, devices, the
//! VXLAN packets that carried it, and the reasons of its losses.

mod parse;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use tracer_ebpf::{FAMILY_IPV4, FAMILY_IPV6, FlowId, Tuple};

use crate::output::{Endpoints, PathRow, Report, vni};
pub use parse::FilterError;

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// Atoms that must all hold on one header of `scope`.
    Header(Scope, Vec<Atom>),
    Vni(u32),
    Netns(String),
    Iface(String),
    Reason(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Either,
    Outer,
    Inner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Either,
    Src,
    Dst,
}

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Host(Side, IpAddr),
    Net(Side, IpAddr, u8),
    Port(Side, u16, u16),
    Proto(u8),
    Family(u8),
}

/// What a filter looks at in one row or path.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    outer: Vec<Tuple>,
    inner: Vec<Tuple>,
    vnis: Vec<u32>,
    netns: Vec<&'a str>,
    ifaces: Vec<&'a str>,
    reasons: Vec<&'a str>,
}

impl<'a> Facts<'a> {
    /// A row about one packet, seen at `netns`/`iface`.
    pub fn row(id: &FlowId, netns: &'a str, iface: Option<&'a str>) -> Self {
        Facts {
            outer: vec![id.outer],
            inner: vec![if id.inner.family != 0 {
                id.inner
            } else {
                id.outer
            }],
            vnis: vni(id).into_iter().collect(),
            netns: vec![netns],
            ifaces: iface.into_iter().collect(),
            reasons: Vec::new(),
        }
    }

    pub fn with_reason(mut self, reason: Option<&'a str>) -> Self {
        self.reasons.extend(reason);
        self
    }

    pub fn path(p: &'a PathRow) -> Self {
        let mut outer = vec![p.id.outer];
        outer.extend(p.carriers.iter().copied());
        let mut netns: Vec<&str> = p.hops.iter().map(|h| &*h.netns).collect();
        netns.extend(p.lost.iter().map(|l| l.netns.as_str()));
        Facts {
            outer,
            inner: vec![p.id.outer],
            vnis: vni(&p.id).into_iter().collect(),
            netns,
            ifaces: p.hops.iter().map(|h| &*h.iface).collect(),
            reasons: p.lost.iter().filter_map(|l| l.reason.as_deref()).collect(),
        }
    }
}

impl Filter {
    /// Parses `text`; the error says at which column and why.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        Ok(Filter {
            text: text.to_string(),
            expr: parse::parse(text)?,
        })
    }

    /// The expression as the user wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, facts: &Facts) -> bool {
        self.expr.eval(facts)
    }

    pub fn matches_row(&self, id: &FlowId, netns: &str, iface: Option<&str>) -> bool {
        self.matches(&Facts::row(id, netns, iface))
    }

    pub fn matches_path(&self, p: &PathRow) -> bool {
        self.matches(&Facts::path(p))
    }

    /// Keeps the rows and paths of `r` that match. The one place a filter
    /// is applied to a report: `--filter` and the live view both use it.
    pub fn retain(&self, r: &mut Report) {
        let row = |id: &FlowId, ns: &str, iface: Option<&str>| self.matches_row(id, ns, iface);
        r.flows.retain(|f| row(&f.id, &f.netns, Some(&f.iface)));
        r.drops.retain(|d| {
            self.matches(
                &Facts::row(&d.id, &d.netns, d.iface.as_deref()).with_reason(d.reason.as_deref()),
            )
        });
        r.verdicts
            .retain(|v| row(&v.id, &v.netns, v.iface.as_deref()));
        r.icmps.retain(|i| row(&i.id, &i.netns, i.iface.as_deref()));
        r.frags.retain(|f| row(&f.id, &f.netns, Some(&f.iface)));
        r.rules.retain(|x| row(&x.id, &x.netns, None));
        for m in &mut r.mtu {
            m.flows.retain(|f| row(&f.id, &f.netns, Some(&f.iface)));
        }
        r.mtu.retain(|m| !m.flows.is_empty());
        r.paths.retain(|p| self.matches_path(p));
        r.captures.retain(|c| {
            self.matches(
                &Facts::row(&c.id, &c.netns, c.iface.as_deref()).with_reason(c.reason.as_deref()),
            )
        });
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Filter::parse(s)
    }
}

impl Expr {
    fn eval(&self, f: &Facts) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(f) || b.eval(f),
            Expr::And(a, b) => a.eval(f) && b.eval(f),
            Expr::Not(a) => !a.eval(f),
            Expr::Header(scope, atoms) => {
                let on = |h: &Tuple| atoms.iter().all(|a| a.holds(h));
                match scope {
                    Scope::Outer => f.outer.iter().any(on),
                    Scope::Inner => f.inner.iter().any(on),
                    Scope::Either => f.outer.iter().chain(&f.inner).any(on),
                }
            }
            Expr::Vni(v) => f.vnis.contains(v),
            Expr::Netns(n) => f.netns.iter().any(|x| x == n),
            Expr::Iface(n) => f.ifaces.iter().any(|x| x == n),
            Expr::Reason(r) => f.reasons.iter().any(|x| reason_name(x) == *r),
        }
    }
}

impl Atom {
    fn holds(&self, t: &Tuple) -> bool {
        let e = Endpoints::of(t);
        let side = |s: &Side, ok: &dyn Fn(Option<IpAddr>, Option<u16>) -> bool| match s {
            Side::Src => ok(e.src, e.sport),
            Side::Dst => ok(e.dst, e.dport),
            Side::Either => ok(e.src, e.sport) || ok(e.dst, e.dport),
        };
        match self {
            Atom::Host(s, want) => side(s, &|a, _| a == Some(*want)),
            Atom::Net(s, net, len) => side(s, &|a, _| a.is_some_and(|a| in_net(a, *net, *len))),
            Atom::Port(s, lo, hi) => side(s, &|_, p| p.is_some_and(|p| (*lo..=*hi).contains(&p))),
            Atom::Proto(p) => t.family != 0 && t.proto == *p,
            Atom::Family(f) => t.family == *f,
        }
    }
}

fn in_net(a: IpAddr, net: IpAddr, len: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A drop reason as rows name it, from any spelling `--reason` takes.
fn reason_name(r: &str) -> String {
    let up = r.to_ascii_uppercase();
    up.strip_prefix("SKB_DROP_REASON_")
        .unwrap_or(&up)
        .to_string()
}

/// IPv4 or IPv6, as the `ip` and `ip6` atoms name them.
const FAMILIES: [(&str, u8); 2] = [("ip", FAMILY_IPV4), ("ip6", FAMILY_IPV6)];
