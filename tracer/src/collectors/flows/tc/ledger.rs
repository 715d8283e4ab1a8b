//! What a tracer attached over netlink, written down as it goes, so that the
//! next start can remove what a killed run left (filters and clsact qdiscs
//! outlive their process; tcx links do not).
//!
//! One file per process in [`DIR`]: a header with the pid and its start
//! time (a reused pid is not the same process), then a line per qdisc the
//! run created and per filter it added. A leftover is removed only if it is
//! still exactly what was recorded: the filter runs the recorded BPF program,
//! and the qdisc is on the same device and holds no filter any more.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

use super::clsact::{self, Hook};
use crate::sys::{
    netns::{self, Netns},
    process,
};

/// Where the ledgers are: a tmpfs that a reboot, which also clears every
/// qdisc, empties.
pub const DIR: &str = "/run/tracer";

/// This process's ledger; removed by [`Ledger::close`] once everything it
/// lists was detached.
pub struct Ledger {
    path: PathBuf,
    file: File,
}

/// Where a recorded attachment is: a device in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    netns_inode: u64,
    netns_path: PathBuf,
    ifindex: u32,
    device: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Qdisc(Place),
    Filter {
        place: Place,
        hook: Hook,
        priority: u16,
        handle: u32,
        prog_id: u32,
    },
}

impl Ledger {
    pub fn open() -> Result<Ledger> {
        fs::create_dir_all(DIR).with_context(|| format!("create {DIR}"))?;
        let pid = std::process::id();
        let path = Path::new(DIR).join(format!("{pid}.tc"));
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        writeln!(file, "tracer {pid} {}", process::start_time(pid)?)?;
        Ok(Ledger { path, file })
    }

    pub fn qdisc(&mut self, ns: &Netns, ifindex: u32, device: &str) -> Result<()> {
        self.write(&Entry::Qdisc(place(ns, ifindex, device)))
    }

    pub fn filter(
        &mut self,
        ns: &Netns,
        ifindex: u32,
        device: &str,
        (hook, priority, handle, prog_id): (Hook, u16, u32, u32),
    ) -> Result<()> {
        self.write(&Entry::Filter {
            place: place(ns, ifindex, device),
            hook,
            priority,
            handle,
            prog_id,
        })
    }

    fn write(&mut self, e: &Entry) -> Result<()> {
        writeln!(self.file, "{}", format_entry(e))
            .with_context(|| format!("write {}", self.path.display()))
    }

    /// Everything listed was detached: forget it.
    pub fn close(self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn place(ns: &Netns, ifindex: u32, device: &str) -> Place {
    Place {
        netns_inode: ns.inode,
        netns_path: ns.path.clone(),
        ifindex,
        device: device.to_string(),
    }
}

/// One line; the path goes last, as it may hold spaces.
fn format_entry(e: &Entry) -> String {
    match e {
        Entry::Qdisc(p) => format!(
            "qdisc {} {} {} {}",
            p.netns_inode,
            p.ifindex,
            p.device,
            p.netns_path.display()
        ),
        Entry::Filter {
            place: p,
            hook,
            priority,
            handle,
            prog_id,
        } => format!(
            "filter {} {} {} {} {priority} {handle} {prog_id} {}",
            p.netns_inode,
            p.ifindex,
            p.device,
            hook.as_str(),
            p.netns_path.display()
        ),
    }
}

fn parse_entry(line: &str) -> Option<Entry> {
    let (kind, rest) = line.split_once(' ')?;
    let fields = if kind == "qdisc" { 3 } else { 7 };
    let mut it = rest.splitn(fields + 1, ' ');
    let mut next = || it.next();
    let netns_inode = next()?.parse().ok()?;
    let ifindex = next()?.parse().ok()?;
    let device = next()?.to_string();
    if kind == "qdisc" {
        let netns_path = PathBuf::from(next()?);
        return Some(Entry::Qdisc(Place {
            netns_inode,
            netns_path,
            ifindex,
            device,
        }));
    }
    if kind != "filter" {
        return None;
    }
    let hook = Hook::from_name(next()?)?;
    let priority = next()?.parse().ok()?;
    let handle = next()?.parse().ok()?;
    let prog_id = next()?.parse().ok()?;
    let netns_path = PathBuf::from(next()?);
    Some(Entry::Filter {
        place: Place {
            netns_inode,
            netns_path,
            ifindex,
            device,
        },
        hook,
        priority,
        handle,
        prog_id,
    })
}

/// What [`remove_leftovers`] removed, for one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub pids: Vec<u32>,
    pub filters: usize,
    pub qdiscs: usize,
}

/// Removes what tracers that are gone (killed) left attached, and their
/// ledgers. Ledgers of running tracers, and anything not exactly as
/// recorded, are left alone.
pub fn remove_leftovers() -> Removed {
    let mut removed = Removed::default();
    let Ok(dir) = fs::read_dir(DIR) else {
        return removed;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "tc") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let mut lines = text.lines();
        let Some((pid, started)) = lines.next().and_then(parse_header) else {
            continue;
        };
        if process::start_time(pid).is_ok_and(|t| t == started) {
            continue; // a tracer that is still running
        }
        let entries: Vec<Entry> = lines.filter_map(parse_entry).collect();
        // Filters first: a qdisc goes only once it is empty.
        let (filters, qdiscs): (Vec<&Entry>, Vec<&Entry>) = entries
            .iter()
            .partition(|e| matches!(e, Entry::Filter { .. }));
        for e in filters.into_iter().chain(qdiscs) {
            match undo(e) {
                Ok(true) if matches!(e, Entry::Filter { .. }) => removed.filters += 1,
                Ok(true) => removed.qdiscs += 1,
                _ => {}
            }
        }
        let _ = fs::remove_file(&path);
        removed.pids.push(pid);
    }
    removed
}

fn parse_header(line: &str) -> Option<(u32, u64)> {
    let mut w = line.split(' ');
    match (w.next(), w.next(), w.next()) {
        (Some("tracer"), Some(pid), Some(t)) => Some((pid.parse().ok()?, t.parse().ok()?)),
        _ => None,
    }
}

/// Removes one recorded leftover if it is still there as recorded; whether it was.
fn undo(e: &Entry) -> Result<bool> {
    let p = match e {
        Entry::Qdisc(p) | Entry::Filter { place: p, .. } => p,
    };
    // The namespace may have gone (and everything in it with it).
    let Some(ns) = netns::find_by_inode(p.netns_inode, &p.netns_path) else {
        return Ok(false);
    };
    netns::run_in(&ns, || -> Result<bool> {
        if !clsact::same_device(p.ifindex, &p.device)? {
            return Ok(false);
        }
        match e {
            Entry::Qdisc(_) => clsact::delete_qdisc_if_unused(p.ifindex),
            Entry::Filter {
                hook,
                priority,
                handle,
                prog_id,
                ..
            } => {
                let ours = clsact::filters(p.ifindex, *hook)?.into_iter().any(|f| {
                    f.priority == *priority && f.handle == *handle && f.prog_id == Some(*prog_id)
                });
                if ours {
                    clsact::delete_filter(p.ifindex, *hook, *priority, *handle)?;
                }
                Ok(ours)
            }
        }
    })?
    .map_err(|e| anyhow!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_spaces_in_paths() {
        let place = Place {
            netns_inode: 4026532001,
            netns_path: PathBuf::from("/var/run/netns/my ns"),
            ifindex: 7,
            device: "veth0".into(),
        };
        for e in [
            Entry::Qdisc(place.clone()),
            Entry::Filter {
                place,
                hook: Hook::Egress,
                priority: 49152,
                handle: 1,
                prog_id: 1234,
            },
        ] {
            assert_eq!(parse_entry(&format_entry(&e)), Some(e));
        }
        assert_eq!(parse_entry("filter 1 2"), None);
        assert_eq!(parse_header("tracer 42 1234567"), Some((42, 1234567)));
        assert_eq!(parse_header("tracer x 1"), None);
    }
}
