//! Attaching the TC programs to devices inside their namespaces.
//!
//! On kernels >= 6.6 they are attached with tcx links, which belong to
//! tracer's file descriptors and go away with the process even on SIGKILL.
//! Older kernels get a filter on a clsact qdisc over netlink: tracer removes
//! its filters, and the qdiscs it created, from inside their namespace on
//! every exit it controls, and writes down what it attached (see
//! [`ledger`]) so that the next start removes what a killed run left.

pub mod clsact;
pub mod ledger;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, qdisc_add_clsact},
    },
};
use clap::ValueEnum;

use crate::{
    sys::{kernel::Kernel, netns, netns::Netns},
    topology::{Target, devices::Device},
};
use clsact::Hook;
use ledger::Ledger;

pub const INGRESS: &str = "tc_ingress";
pub const EGRESS: &str = "tc_egress";

/// How the TC programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    /// tcx where the kernel has it (>= 6.6), netlink otherwise.
    Auto,
    Tcx,
    /// A filter on a clsact qdisc, as kernels before 6.6 need.
    Netlink,
}

impl AttachMode {
    pub fn netlink(self, kernel: &Kernel) -> bool {
        match self {
            AttachMode::Auto => !kernel.at_least(6, 6),
            AttachMode::Tcx => false,
            AttachMode::Netlink => true,
        }
    }
}

/// One program on one device.
enum Attachment {
    /// A tcx link: detached when its fd closes, from any thread.
    Tcx(SchedClassifierLink),
    /// A filter on a clsact qdisc: removed by tracer, from inside its namespace.
    Filter {
        ns: Netns,
        ifindex: u32,
        hook: Hook,
        priority: u16,
        handle: u32,
    },
}

/// A traced device: (namespace inode, ifindex, name). The name too: an
/// ifindex may be reused by a new device.
type DevKey = (u64, u32, String);

fn dev_key(ns: &Netns, dev: &Device) -> DevKey {
    (ns.inode, dev.ifindex, dev.name.clone())
}

/// What tracer attached; undone by [`Links::detach`] (tcx links also when
/// dropped or when the process dies).
#[derive(Default)]
pub struct Links {
    netlink: bool,
    attached: Vec<(DevKey, Attachment)>,
    /// clsact qdiscs tracer created, (namespace, ifindex): deleted on detach.
    qdiscs: Vec<(Netns, u32)>,
    /// What is attached over netlink, for the next start if this run is killed.
    ledger: Option<Ledger>,
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()?)
}

impl Links {
    pub fn new(mode: AttachMode, kernel: &Kernel) -> Self {
        Links {
            netlink: mode.netlink(kernel),
            attached: Vec::new(),
            qdiscs: Vec::new(),
            ledger: None,
        }
    }

    /// Removes what killed runs left attached over netlink, and says so.
    pub fn remove_leftovers() {
        let removed = ledger::remove_leftovers();
        if removed.filters + removed.qdiscs > 0 {
            eprintln!(
                "tracer: removed {} filters and {} clsact qdiscs left by killed tracer runs \
                 (pids {:?})",
                removed.filters, removed.qdiscs, removed.pids
            );
        }
    }

    /// Attaches both directions to every traced device; one that vanished
    /// since it was listed (a live host) is left out. On error, what was
    /// attached so far stays in `self` for the caller to detach.
    pub fn attach(&mut self, ebpf: &mut Ebpf, targets: &[Target]) -> Result<()> {
        for t in targets {
            for dev in &t.traced {
                if let Err(e) = self.attach_device(ebpf, &t.netns, dev) {
                    if still_there(&t.netns, dev) {
                        return Err(e);
                    }
                    self.forget(&dev_key(&t.netns, dev));
                }
            }
        }
        Ok(())
    }

    /// Follows `targets` as devices and namespaces come and go: detaches
    /// from devices no longer traced, attaches to new ones. A device that
    /// cannot be attached to is said on stderr; returns how many of those
    /// are still there (a device that vanished meanwhile is not a failure).
    pub fn sync(&mut self, ebpf: &mut Ebpf, targets: &[Target]) -> usize {
        let wanted: Vec<(&Netns, &Device)> = targets
            .iter()
            .flat_map(|t| t.traced.iter().map(move |d| (&t.netns, d)))
            .collect();
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|(k, _)| wanted.iter().any(|(ns, d)| dev_key(ns, d) == *k));
        self.attached = keep;
        for (_, a) in gone {
            self.detach_one(a);
        }
        let mut failed = 0;
        for (ns, dev) in wanted {
            let key = dev_key(ns, dev);
            if self.attached.iter().any(|(k, _)| *k == key) {
                continue;
            }
            if let Err(e) = self.attach_device(ebpf, ns, dev) {
                // Half attached (one direction): undo it, try again next time.
                self.forget(&key);
                if still_there(ns, dev) {
                    eprintln!("tracer: {e:#}");
                    failed += 1;
                }
            }
        }
        failed
    }

    /// Attaches both directions to `dev` of namespace `ns`.
    pub fn attach_device(&mut self, ebpf: &mut Ebpf, ns: &Netns, dev: &Device) -> Result<()> {
        if self.netlink && self.ledger.is_none() {
            match Ledger::open() {
                Ok(l) => self.ledger = Some(l),
                // Attaching still works; only a SIGKILL would leave filters behind.
                Err(e) => eprintln!(
                    "tracer: cannot record netlink filters ({e:#}): after a kill -9, remove \
                     them with `tc qdisc del dev DEVICE clsact`"
                ),
            }
        }
        for (program, hook) in [(INGRESS, Hook::Ingress), (EGRESS, Hook::Egress)] {
            let prog = classifier(ebpf, program)?;
            let what = || format!("attach {program} to {} in {}", dev.name, ns.name);
            let attachment = if self.netlink {
                let (attachment, created) =
                    netns::run_in(&ns.path, || attach_filter(prog, dev, hook))?
                        .with_context(what)?;
                if created {
                    self.qdiscs.push((ns.clone(), dev.ifindex));
                    if let Some(l) = &mut self.ledger {
                        l.qdisc(ns, dev.ifindex, &dev.name)?;
                    }
                }
                if let (
                    Some(l),
                    FilterInfo {
                        priority,
                        handle,
                        prog_id,
                    },
                ) = (&mut self.ledger, attachment)
                {
                    l.filter(
                        ns,
                        dev.ifindex,
                        &dev.name,
                        (hook, priority, handle, prog_id),
                    )?;
                }
                Attachment::Filter {
                    ns: ns.clone(),
                    ifindex: dev.ifindex,
                    hook,
                    priority: attachment.priority,
                    handle: attachment.handle,
                }
            } else {
                let kind = tc_attach_type(hook);
                let link = netns::run_in(&ns.path, || -> Result<SchedClassifierLink> {
                    let id = prog.attach(&dev.name, kind)?;
                    Ok(prog.take_link(id)?)
                })?
                .with_context(what)?;
                Attachment::Tcx(link)
            };
            self.attached.push((dev_key(ns, dev), attachment));
        }
        Ok(())
    }

    /// Detaches what is attached to the device `key` (one direction, if
    /// attaching the other failed).
    fn forget(&mut self, key: &DevKey) {
        let (half, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|(k, _)| k == key);
        self.attached = rest;
        for (_, a) in half {
            self.detach_one(a);
        }
    }

    /// Detaches one program: a filter from inside its namespace (which may
    /// be gone, and the filter with it).
    fn detach_one(&mut self, a: Attachment) -> bool {
        match a {
            Attachment::Tcx(link) => {
                drop(link);
                true
            }
            Attachment::Filter {
                ns,
                ifindex,
                hook,
                priority,
                handle,
            } => {
                let done = netns::run_in(&ns.path, || {
                    clsact::delete_filter(ifindex, hook, priority, handle)
                });
                matches!(done, Ok(Ok(())))
            }
        }
    }

    /// Detaches everything: tcx links by closing them, filters from inside
    /// their namespace, then the clsact qdiscs tracer created (if empty).
    pub fn detach(&mut self) {
        let mut complete = true;
        for (_, a) in std::mem::take(&mut self.attached) {
            complete &= self.detach_one(a);
        }
        for (ns, ifindex) in self.qdiscs.drain(..) {
            let _ = netns::run_in(&ns.path, || clsact::delete_qdisc_if_unused(ifindex));
        }
        // Kept when something could not be removed: the next start tries again.
        if let Some(l) = self.ledger.take()
            && complete
        {
            l.close();
        }
    }

    pub fn count(&self) -> usize {
        self.attached.len()
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Whether `dev` is still in namespace `ns` under its name and ifindex.
fn still_there(ns: &Netns, dev: &Device) -> bool {
    let Ok(name) = std::ffi::CString::new(dev.name.as_str()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    netns::run_in(&ns.path, || unsafe { libc::if_nametoindex(name.as_ptr()) })
        .is_ok_and(|i| i == dev.ifindex)
}

fn tc_attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

/// A filter tracer added: where it is and which program it runs.
#[derive(Clone, Copy)]
struct FilterInfo {
    priority: u16,
    handle: u32,
    prog_id: u32,
}

/// Adds a clsact qdisc to `dev` if it has none and a filter running `prog`
/// on `hook`, in the calling thread's namespace; whether the qdisc was created.
fn attach_filter(
    prog: &mut SchedClassifier,
    dev: &Device,
    hook: Hook,
) -> Result<(FilterInfo, bool)> {
    let created = match qdisc_add_clsact(&dev.name) {
        Ok(()) => true,
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    // The kernel picks a free priority and handle, so that filters of other
    // tools, and of another tracer, stay apart.
    let options = TcAttachOptions::Netlink(NlOptions::default());
    let id = prog.attach_with_options(&dev.name, tc_attach_type(hook), options)?;
    let link = prog.take_link(id)?;
    let info = FilterInfo {
        priority: link.priority()?,
        handle: link.handle()?.into(),
        prog_id: prog.info()?.id(),
    };
    // tracer removes the filter itself, from inside the namespace: aya would
    // look its ifindex up in whatever namespace the dropping thread is in.
    std::mem::forget(link);
    Ok((info, created))
}
