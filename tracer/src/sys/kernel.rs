//! What the running kernel offers, read once at start: its BTF (for struct
//! offsets, enum values and the prototypes of BTF tracepoints, and for
//! loading programs typed by it) and its version.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{Endianness, util::KernelVersion};
use aya_obj::btf::BtfKind;

use crate::sys::btf;

pub struct Kernel {
    /// For reading types (btf-rs resolves names and members).
    pub btf: btf_rs::Btf,
    /// The same BTF as aya loads programs with.
    pub aya_btf: aya::Btf,
    /// `None` if the release string could not be read.
    pub version: Option<KernelVersion>,
    /// BTF id of the kfunc `bpf_cast_to_kern_ctx` (6.2+), when the BTF is
    /// the running kernel's own (a kfunc call names it by that id).
    pub cast_to_kern_ctx: Option<u32>,
}

impl Kernel {
    /// Reads the kernel's BTF from `btf_path` (normally /sys/kernel/btf/vmlinux).
    pub fn read(btf_path: &Path) -> Result<Self> {
        let btf = btf::load(btf_path)?;
        let aya_btf = aya::Btf::parse_file(btf_path, Endianness::default())
            .with_context(|| format!("parse {}", btf_path.display()))?;
        let cast_to_kern_ctx = (btf_path == Path::new(btf::VMLINUX))
            .then(|| {
                aya_btf
                    .id_by_type_name_kind("bpf_cast_to_kern_ctx", BtfKind::Func)
                    .ok()
            })
            .flatten();
        Ok(Kernel {
            btf,
            aya_btf,
            version: KernelVersion::current().ok(),
            cast_to_kern_ctx,
        })
    }

    /// How many arguments BTF tracepoint `name` has; `None` if there is no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        btf::tracepoint_args(&self.btf, name)
    }

    /// The kernel is at least `major.minor`.
    pub fn at_least(&self, major: u8, minor: u8) -> bool {
        self.version
            .is_some_and(|v| v >= KernelVersion::new(major, minor, 0))
    }
}
