//! Attaching the TC programs to devices inside their namespaces.
//!
//! On kernels >= 6.6 aya attaches with tcx links, which belong to tracer's file
//! descriptors and go away with the process even on SIGKILL. Older kernels get
//! a clsact filter over netlink; those are detached in their namespace on exit.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};

use crate::{netns, targets::Target};

pub const INGRESS: &str = "tc_ingress";
pub const EGRESS: &str = "tc_egress";

struct Link {
    ns: std::path::PathBuf,
    program: &'static str,
    id: SchedClassifierLinkId,
}

/// The attached links; detached by [`Links::detach`] or when the `Ebpf` is dropped.
#[derive(Default)]
pub struct Links(Vec<Link>);

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()?)
}

impl Links {
    /// Attaches both directions to every traced device. On error, what was
    /// attached so far stays in `self` for the caller to detach.
    pub fn attach(&mut self, ebpf: &mut Ebpf, targets: &[Target]) -> Result<()> {
        for (program, kind) in [
            (INGRESS, TcAttachType::Ingress),
            (EGRESS, TcAttachType::Egress),
        ] {
            let prog = classifier(ebpf, program)?;
            for t in targets.iter().filter(|t| !t.traced.is_empty()) {
                let links = &mut self.0;
                netns::run_in(&t.netns.path, || -> Result<()> {
                    for dev in &t.traced {
                        let id = prog.attach(&dev.name, kind).with_context(|| {
                            format!("attach {program} to {} in {}", dev.name, t.netns.name)
                        })?;
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

    /// Detaches every link from inside its namespace (netlink filters are
    /// found by ifindex, which only means something there).
    pub fn detach(&mut self, ebpf: &mut Ebpf) {
        for link in self.0.drain(..) {
            let Ok(prog) = classifier(ebpf, link.program) else {
                continue;
            };
            let _ = netns::run_in(&link.ns, || prog.detach(link.id));
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}
