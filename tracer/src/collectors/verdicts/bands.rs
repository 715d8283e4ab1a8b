//! Where the netfilter observers go: the priority bands ("tables") they
//! bracket at each hook, in every traced namespace.

use std::{
    collections::{HashMap, hash_map::Entry},
    os::fd::OwnedFd,
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use tracer_ebpf::{hook, table};

use crate::{
    collectors::verdicts::chains, collectors::verdicts::nf_loader::NfPrograms, sys::netns,
    topology::Target,
};

pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// A table's priority at the hooks it registers on (iptables' standard ones;
/// nftables chains of the same priority fall in the same band).
#[derive(Debug)]
pub struct Band {
    pub table: u8,
    pub name: &'static str,
    /// Programs linked just before and just after the table.
    pub programs: (&'static str, &'static str),
    pub hooks: &'static [(u8, i32)],
}

const ALL_HOOKS: [u8; 5] = [
    hook::PRE_ROUTING,
    hook::LOCAL_IN,
    hook::FORWARD,
    hook::LOCAL_OUT,
    hook::POST_ROUTING,
];

pub const BANDS: [Band; 5] = [
    Band {
        table: table::FILTER,
        name: "filter",
        programs: ("nf_filter_in", "nf_filter_out"),
        // iptables' filter is at input, forward and output; nftables chains of
        // filter priority may be at any hook.
        hooks: &[
            (hook::PRE_ROUTING, 0),
            (hook::LOCAL_IN, 0),
            (hook::FORWARD, 0),
            (hook::LOCAL_OUT, 0),
            (hook::POST_ROUTING, 0),
        ],
    },
    Band {
        table: table::RAW,
        name: "raw",
        programs: ("nf_raw_in", "nf_raw_out"),
        hooks: &[(hook::PRE_ROUTING, -300), (hook::LOCAL_OUT, -300)],
    },
    Band {
        table: table::MANGLE,
        name: "mangle",
        programs: ("nf_mangle_in", "nf_mangle_out"),
        hooks: &[
            (hook::PRE_ROUTING, -150),
            (hook::LOCAL_IN, -150),
            (hook::FORWARD, -150),
            (hook::LOCAL_OUT, -150),
            (hook::POST_ROUTING, -150),
        ],
    },
    Band {
        table: table::NAT,
        name: "nat",
        programs: ("nf_nat_in", "nf_nat_out"),
        hooks: &[
            (hook::PRE_ROUTING, -100),
            (hook::LOCAL_OUT, -100),
            (hook::LOCAL_IN, 100),
            (hook::POST_ROUTING, 100),
        ],
    },
    Band {
        table: table::SECURITY,
        name: "security",
        programs: ("nf_security_in", "nf_security_out"),
        hooks: &[
            (hook::LOCAL_IN, 50),
            (hook::FORWARD, 50),
            (hook::LOCAL_OUT, 50),
        ],
    },
];

pub fn hook_name(h: u8) -> &'static str {
    match h {
        hook::PRE_ROUTING => "prerouting",
        hook::LOCAL_IN => "input",
        hook::FORWARD => "forward",
        hook::LOCAL_OUT => "output",
        hook::POST_ROUTING => "postrouting",
        _ => "?",
    }
}

pub fn table_name(t: u8) -> &'static str {
    BANDS.iter().find(|b| b.table == t).map_or("?", |b| b.name)
}

pub fn family_name(pf: u8) -> &'static str {
    match pf {
        NFPROTO_IPV4 => "ipv4",
        NFPROTO_IPV6 => "ipv6",
        _ => "?",
    }
}

/// The bands named by `--nf-table` (`all` for every one); default filter.
pub fn bands(names: &[String]) -> Result<Vec<&'static Band>> {
    if names.is_empty() {
        return Ok(vec![&BANDS[0]]);
    }
    if names.iter().any(|n| n == "all") {
        return Ok(BANDS.iter().collect());
    }
    names
        .iter()
        .map(|n| match BANDS.iter().find(|b| b.name == n) {
            Some(b) => Ok(b),
            None => bail!("unknown --nf-table '{n}' (filter, raw, mangle, nat, security or all)"),
        })
        .collect()
}

/// Program names of `bands`.
pub fn program_names(bands: &[&Band]) -> Vec<&'static str> {
    bands
        .iter()
        .flat_map(|b| [b.programs.0, b.programs.1])
        .collect()
}

/// Where a pair of observers is linked: namespace, family, hook, table.
type Place = (PathBuf, u8, u8, u8);

/// The observers of every traced namespace, linked where some chain of the
/// table's priority is; dropping a pair unlinks it.
pub struct NfLinks {
    progs: NfPrograms,
    bands: Vec<&'static Band>,
    links: HashMap<Place, [OwnedFd; 2]>,
}

impl NfLinks {
    pub fn new(progs: NfPrograms, bands: Vec<&'static Band>) -> Self {
        NfLinks {
            progs,
            bands,
            links: HashMap::new(),
        }
    }

    /// Links the observers around each band at each hook, IPv4 and IPv6,
    /// where the namespace has a base chain of that priority (a table that
    /// can decide), and unlinks those whose chains are gone. Called at start
    /// and every interval: a table created later is observed from then on.
    pub fn sync(&mut self, targets: &[Target]) -> Result<()> {
        for t in targets {
            let path = t.netns.path.clone();
            let (progs, bands, links) = (&self.progs, &self.bands, &mut self.links);
            netns::run_in(&path, || -> Result<()> {
                let chains = chains::base_chains()?;
                let mut needed = Vec::new();
                for pf in [NFPROTO_IPV4, NFPROTO_IPV6] {
                    for band in bands.iter() {
                        for &(h, prio) in band.hooks {
                            debug_assert!(ALL_HOOKS.contains(&h));
                            if chains
                                .iter()
                                .any(|c| c.sees(pf) && c.hook == h && c.priority == prio)
                            {
                                needed.push((pf, h, *band, prio));
                            }
                        }
                    }
                }
                links.retain(|(ns, pf, h, table), _| {
                    *ns != path
                        || needed
                            .iter()
                            .any(|(p, hk, b, _)| p == pf && hk == h && b.table == *table)
                });
                for (pf, h, band, prio) in needed {
                    if let Entry::Vacant(e) = links.entry((path.clone(), pf, h, band.table)) {
                        let before = progs.link(band.programs.0, pf, h, prio - 1)?;
                        let after = progs.link(band.programs.1, pf, h, prio + 1)?;
                        e.insert([before, after]);
                    }
                }
                Ok(())
            })?
            .with_context(|| format!("netfilter observers in {}", t.netns.name))?;
        }
        Ok(())
    }

    /// Links held (two per observed table, hook and family).
    pub fn len(&self) -> usize {
        2 * self.links.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_selection() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            bands(&[])
                .unwrap()
                .iter()
                .map(|b| b.name)
                .collect::<Vec<_>>(),
            ["filter"]
        );
        assert_eq!(bands(&names(&["all"])).unwrap().len(), 5);
        let two = bands(&names(&["raw", "nat"])).unwrap();
        assert_eq!(
            program_names(&two),
            ["nf_raw_in", "nf_raw_out", "nf_nat_in", "nf_nat_out"]
        );
        assert_eq!(
            bands(&names(&["filtre"])).unwrap_err().to_string(),
            "unknown --nf-table 'filtre' (filter, raw, mangle, nat, security or all)"
        );
    }

    #[test]
    fn names() {
        assert_eq!(hook_name(hook::FORWARD), "forward");
        assert_eq!(table_name(table::NAT), "nat");
        assert_eq!(family_name(NFPROTO_IPV6), "ipv6");
    }
}
