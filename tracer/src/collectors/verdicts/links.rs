//! Where the netfilter observers go: around each counted table's priority
//! at each hook, in every traced namespace, where a chain of that priority
//! exists (a table that can decide).

use std::{
    collections::{HashMap, hash_map::Entry},
    os::fd::OwnedFd,
    path::PathBuf,
};

use anyhow::{Result, bail};

use crate::{
    collectors::verdicts::{chains::ChainReader, raw::NfPrograms},
    model::{Hook, IpFamily, Table},
    sys::netns,
    topology::Target,
};

/// The tables named by `--nf-table` (`all` for every one); default filter.
pub fn tables(names: &[String]) -> Result<Vec<Table>> {
    if names.is_empty() {
        return Ok(vec![Table::Filter]);
    }
    if names.iter().any(|n| n == "all") {
        return Ok(Table::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| match Table::from_name(n) {
            Some(t) => Ok(t),
            None => bail!("unknown --nf-table '{n}' (filter, raw, mangle, nat, security or all)"),
        })
        .collect()
}

/// The observer programs linked just before and just after `table`.
pub fn programs(table: Table) -> (&'static str, &'static str) {
    match table {
        Table::Filter => ("nf_filter_in", "nf_filter_out"),
        Table::Raw => ("nf_raw_in", "nf_raw_out"),
        Table::Mangle => ("nf_mangle_in", "nf_mangle_out"),
        Table::Nat => ("nf_nat_in", "nf_nat_out"),
        Table::Security => ("nf_security_in", "nf_security_out"),
    }
}

/// Program names of `tables`.
pub fn program_names(tables: &[Table]) -> Vec<&'static str> {
    tables
        .iter()
        .flat_map(|&t| {
            let (before, after) = programs(t);
            [before, after]
        })
        .collect()
}

/// Where a pair of observers is linked.
type Place = (PathBuf, IpFamily, Hook, Table);

/// The observers of every traced namespace; dropping a pair unlinks it.
pub struct NfLinks {
    progs: NfPrograms,
    tables: Vec<Table>,
    links: HashMap<Place, [OwnedFd; 2]>,
    /// Each traced namespace's chain reader, by namespace inode.
    readers: HashMap<u64, ChainReader>,
}

impl NfLinks {
    /// The loaded programs, by name.
    pub fn programs(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        self.progs.programs()
    }

    pub fn new(progs: NfPrograms, tables: Vec<Table>) -> Self {
        NfLinks {
            progs,
            tables,
            links: HashMap::new(),
            readers: HashMap::new(),
        }
    }

    /// Links the observers around each table at each hook, IPv4 and IPv6,
    /// where the namespace has a base chain of that priority, and unlinks
    /// those whose chains or namespaces are gone. Called at start and every
    /// interval: a table or namespace created later is observed from then
    /// on. Returns how many pairs could not be linked (said on stderr); a
    /// namespace that vanished meanwhile is not a failure.
    pub fn sync(&mut self, targets: &[Target]) -> usize {
        self.links
            .retain(|(ns, ..), _| targets.iter().any(|t| t.netns.path == *ns));
        self.readers
            .retain(|inode, _| targets.iter().any(|t| t.netns.inode == *inode));
        let mut failed = 0;
        for t in targets {
            let path = &t.netns.path;
            match self.sync_one(t) {
                Ok(()) => {}
                // Gone (a container stopped): its observers went with it.
                Err(_) if !path.exists() => {}
                Err(e) => {
                    eprintln!("tracer: netfilter observers in {}: {e:#}", t.netns.name);
                    failed += 1;
                }
            }
        }
        failed
    }

    /// Reads the base chains of `t`'s namespace with the reader kept for it
    /// (opened inside it the first time), and enters the namespace again only
    /// to link observers around chains that are new.
    fn sync_one(&mut self, t: &Target) -> Result<()> {
        let path = &t.netns.path;
        let reader = match self.readers.entry(t.netns.inode) {
            Entry::Occupied(e) if !e.get().stale() => e.into_mut(),
            e => e
                .insert_entry(netns::run_in(path, ChainReader::open)??)
                .into_mut(),
        };
        let chains = reader.base_chains()?;
        let mut needed = Vec::new();
        for family in IpFamily::BOTH {
            for &table in &self.tables {
                for &hook in table.hooks() {
                    let prio = table.priority(hook);
                    if chains
                        .iter()
                        .any(|c| c.sees(family) && c.hook == hook && c.priority == prio)
                    {
                        needed.push((family, hook, table, prio));
                    }
                }
            }
        }
        self.links.retain(|(ns, f, h, table), _| {
            ns != path
                || needed
                    .iter()
                    .any(|(nf, nh, nt, _)| nf == f && nh == h && nt == table)
        });
        needed.retain(|&(family, hook, table, _)| {
            !self
                .links
                .contains_key(&(path.clone(), family, hook, table))
        });
        if needed.is_empty() {
            return Ok(());
        }
        // A BPF netfilter link attaches in the namespace of the thread that
        // makes it.
        let (progs, links) = (&self.progs, &mut self.links);
        netns::run_in(path, || -> Result<()> {
            for (family, hook, table, prio) in needed {
                let (before, after) = programs(table);
                let before = link_near(progs, before, family, hook, prio, -1)?;
                let after = link_near(progs, after, family, hook, prio, 1)?;
                links.insert((path.clone(), family, hook, table), [before, after]);
            }
            Ok(())
        })?
    }

    /// Links held (two per observed table, hook and family).
    pub fn count(&self) -> usize {
        2 * self.links.len()
    }
}

/// How far from a table's priority an observer may go when another BPF
/// program (another tracer) holds the nearest one. Every table's neighbours
/// are further away than this (mangle -150, filter 0, security 50).
const MAX_SHIFT: i32 = 10;

/// Links `name` at `priority + dir`, or the next free priority further out
/// on the same side: netfilter refuses two BPF programs at one priority
/// (EBUSY), and the observer before a table must stay below its priority,
/// the one after above it.
fn link_near(
    progs: &NfPrograms,
    name: &str,
    family: IpFamily,
    hook: Hook,
    priority: i32,
    dir: i32,
) -> Result<OwnedFd> {
    let mut shift = 1;
    loop {
        match progs.link(name, family, hook, priority + dir * shift) {
            Err(e) if busy(&e) && shift < MAX_SHIFT => shift += 1,
            other => return other,
        }
    }
}

fn busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_selection() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(tables(&[]).unwrap(), [Table::Filter]);
        assert_eq!(tables(&names(&["all"])).unwrap().len(), 5);
        let two = tables(&names(&["raw", "nat"])).unwrap();
        assert_eq!(
            program_names(&two),
            ["nf_raw_in", "nf_raw_out", "nf_nat_in", "nf_nat_out"]
        );
        assert_eq!(
            tables(&names(&["filtre"])).unwrap_err().to_string(),
            "unknown --nf-table 'filtre' (filter, raw, mangle, nat, security or all)"
        );
    }
}
