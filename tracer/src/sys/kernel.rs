//! What the running kernel offers, read once at start: its BTF (for struct
//! offsets, enum values and the prototypes of BTF tracepoints, and for
//! loading programs typed by it) and its version.

use std::{
    cell::OnceCell,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{Endianness, util::KernelVersion};
use btf_rs::Type;

use crate::sys::btf;

pub struct Kernel {
    /// For reading types (btf-rs resolves names and members): the file
    /// mapped, and where each type starts, about 7 MB for vmlinux. Dropped
    /// by [`Kernel::release_types`] once the programs' configuration is
    /// written, before aya's copy is parsed.
    types: Option<btf_rs::Btf>,
    path: PathBuf,
    /// The same BTF as aya loads programs with, parsed when first needed.
    aya_btf: OnceCell<aya::Btf>,
    /// `None` if the release string could not be read.
    pub version: Option<KernelVersion>,
    /// BTF id of the kfunc `bpf_cast_to_kern_ctx` (6.2+), when the BTF is
    /// the running kernel's own (a kfunc call names it by that id).
    pub cast_to_kern_ctx: Option<u32>,
    /// Arguments of the BTF tracepoints tracer attaches to (`None`: no such tracepoint).
    pub kfree_skb_args: Option<usize>,
    pub icmp_send_args: Option<usize>,
}

impl Kernel {
    /// Reads the kernel's BTF from `btf_path` (normally /sys/kernel/btf/vmlinux).
    pub fn read(btf_path: &Path) -> Result<Self> {
        let types = btf::load(btf_path)?;
        let cast_to_kern_ctx = if btf_path == Path::new(btf::VMLINUX) {
            func_id(&types, "bpf_cast_to_kern_ctx")
        } else {
            None
        };
        Ok(Kernel {
            kfree_skb_args: btf::tracepoint_args(&types, "kfree_skb"),
            icmp_send_args: btf::tracepoint_args(&types, "icmp_send"),
            types: Some(types),
            path: btf_path.to_path_buf(),
            aya_btf: OnceCell::new(),
            version: KernelVersion::current().ok(),
            cast_to_kern_ctx,
        })
    }

    /// The kernel's types, until [`Kernel::release_types`].
    pub fn btf(&self) -> &btf_rs::Btf {
        self.types
            .as_ref()
            .expect("kernel types read after release_types (a start-up order bug)")
    }

    /// Frees the types: from here on only [`Kernel::aya_btf`] is used.
    pub fn release_types(&mut self) {
        self.types = None;
    }

    /// The BTF aya loads BTF-typed programs with.
    pub fn aya_btf(&self) -> Result<&aya::Btf> {
        if let Some(btf) = self.aya_btf.get() {
            return Ok(btf);
        }
        let btf = aya::Btf::parse_file(&self.path, Endianness::default())
            .with_context(|| format!("parse {}", self.path.display()))?;
        Ok(self.aya_btf.get_or_init(|| btf))
    }

    /// The kernel is at least `major.minor`.
    pub fn at_least(&self, major: u8, minor: u8) -> bool {
        self.version
            .is_some_and(|v| v >= KernelVersion::new(major, minor, 0))
    }
}

/// BTF id of function `name`, if `btf` has one.
fn func_id(btf: &btf_rs::Btf, name: &str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .ok()?
        .into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Func(_))))
}
