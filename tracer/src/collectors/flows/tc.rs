//! Attaching the TC programs to devices inside their namespaces.
//!
//! On kernels >= 6.6 they are attached with tcx links, which belong to
//! tracer's file descriptors and go away with the process even on SIGKILL.
//! Older kernels get a filter on a clsact qdisc over netlink: tracer detaches
//! its filters (in their namespace: netlink finds devices by ifindex) and
//! deletes the qdiscs it created on every exit it controls; filters left by
//! a killed run are removed by the next one.

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{
            NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
            qdisc_detach_program,
        },
    },
    util::KernelVersion,
};
use clap::ValueEnum;
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle as NlTcHandle, TcMessage},
};

use crate::{sys::netns, topology::Target};

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
    fn netlink(self) -> bool {
        match self {
            AttachMode::Auto => KernelVersion::current()
                .map(|v| v < KernelVersion::new(6, 6, 0))
                .unwrap_or(false),
            AttachMode::Tcx => false,
            AttachMode::Netlink => true,
        }
    }
}

struct Link {
    ns: PathBuf,
    program: &'static str,
    id: SchedClassifierLinkId,
}

/// What tracer attached; undone by [`Links::detach`] (tcx links also when
/// the `Ebpf` is dropped or the process dies).
#[derive(Default)]
pub struct Links {
    links: Vec<Link>,
    /// clsact qdiscs tracer created, (namespace, ifindex): deleted on detach.
    qdiscs: Vec<(PathBuf, u32)>,
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()?)
}

impl Links {
    /// Attaches both directions to every traced device. On error, what was
    /// attached so far stays in `self` for the caller to detach.
    pub fn attach(&mut self, ebpf: &mut Ebpf, targets: &[Target], mode: AttachMode) -> Result<()> {
        let netlink = mode.netlink();
        for (program, kind) in [
            (INGRESS, TcAttachType::Ingress),
            (EGRESS, TcAttachType::Egress),
        ] {
            let prog = classifier(ebpf, program)?;
            for t in targets.iter().filter(|t| !t.traced.is_empty()) {
                let (links, qdiscs) = (&mut self.links, &mut self.qdiscs);
                netns::run_in(&t.netns.path, || -> Result<()> {
                    for dev in &t.traced {
                        let what =
                            || format!("attach {program} to {} in {}", dev.name, t.netns.name);
                        let id = if netlink {
                            // Filters of a run that was killed outlive it: remove them.
                            let _ = qdisc_detach_program(&dev.name, kind, program);
                            match qdisc_add_clsact(&dev.name) {
                                Ok(()) => qdiscs.push((t.netns.path.clone(), dev.ifindex)),
                                Err(TcError::NetlinkError(e))
                                    if e.raw_os_error() == Some(libc::EEXIST) => {}
                                Err(e) => return Err(e).with_context(what),
                            }
                            // aya keys netlink links by (ifindex, handle, ...): ifindexes
                            // repeat across namespaces, so give each filter its own handle.
                            let options = TcAttachOptions::Netlink(NlOptions {
                                handle: TcHandle::new(0, links.len() as u16 + 1),
                                ..NlOptions::default()
                            });
                            prog.attach_with_options(&dev.name, kind, options)
                        } else {
                            prog.attach(&dev.name, kind)
                        }
                        .with_context(what)?;
                        links.push(Link {
                            ns: t.netns.path.clone(),
                            program,
                            id,
                        });
                    }
                    Ok(())
                })??;
            }
        }
        Ok(())
    }

    /// Detaches every link from inside its namespace, then deletes the
    /// clsact qdiscs tracer created.
    pub fn detach(&mut self, ebpf: &mut Ebpf) {
        for link in self.links.drain(..) {
            let Ok(prog) = classifier(ebpf, link.program) else {
                continue;
            };
            let _ = netns::run_in(&link.ns, || prog.detach(link.id));
        }
        for (ns, ifindex) in self.qdiscs.drain(..) {
            let _ = netns::run_in(&ns, || delete_clsact(ifindex));
        }
    }

    pub fn count(&self) -> usize {
        self.links.len()
    }
}

/// Deletes the clsact qdisc of device `ifindex` in the calling thread's
/// namespace (`tc qdisc del dev X clsact`), with every filter on it.
pub fn delete_clsact(ifindex: u32) -> Result<()> {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.parent = NlTcHandle::CLSACT;
    msg.header.handle = NlTcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    crate::sys::netlink::Netlink::open()?.ack(
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        "delete clsact",
    )
}
