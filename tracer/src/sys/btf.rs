//! What the running kernel's BTF says: struct field offsets for the eBPF
//! programs (Rust eBPF has no CO-RE) and names of enum values.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Backend, Btf, Type};
use tracer_ebpf::Offsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Reads kernel BTF from `path` (normally [`VMLINUX`]).
pub fn load(path: &Path) -> Result<Btf> {
    if !path.exists() {
        if path == Path::new(VMLINUX) {
            bail!(
                "the kernel exposes no BTF ({VMLINUX} is missing): tracer needs \
                 CONFIG_DEBUG_INFO_BTF=y, or a BTF file for this kernel given with --kernel-btf"
            );
        }
        bail!("no BTF file at {}", path.display());
    }
    // Mapped, not parsed: tracer looks up a few dozen of vmlinux's ~150,000
    // types, and parsing them all took 130 ms and 40 MB (seconds in an
    // emulated VM). Kernels before 6.16 cannot map the sysfs file: a copy
    // in memory can be.
    Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| mapped_copy(path))
        .map_err(|e| anyhow!("{} is not usable kernel BTF: {e}", path.display()))
}

/// `path`'s BTF, mapped from a copy in memory.
fn mapped_copy(path: &Path) -> btf_rs::Result<Btf> {
    let copy = in_memory(path)?;
    Btf::from_file_with_backend(format!("/proc/self/fd/{}", copy.as_raw_fd()), Backend::Mmap)
}

/// A copy of `path` in an anonymous file, which can be mapped.
fn in_memory(path: &Path) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"tracer-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just made and nothing else owns it.
    let mut copy = unsafe { File::from_raw_fd(fd) };
    io::copy(&mut File::open(path)?, &mut copy)?;
    Ok(copy)
}

/// Offsets of every field the programs read, from `btf`, and the fields
/// this kernel lacks (as `struct.member`; their offsets are left 0, and the
/// collectors that read them do not start).
pub fn offsets(btf: &Btf) -> (Offsets, Vec<String>) {
    let mut missing = Vec::new();
    // Each lookup by name reads every type's name: one per struct.
    let mut structs: HashMap<&str, Option<btf_rs::Struct>> = HashMap::new();
    let mut f = |s: &'static str, path: &str| {
        let found = structs
            .entry(s)
            .or_insert_with(|| find_struct(btf, s).ok())
            .clone();
        found
            .and_then(|found| offset_in(btf, found, s, path).ok())
            .unwrap_or_else(|| {
                missing.push(format!("{s}.{path}"));
                0
            })
    };
    let offsets = Offsets {
        skb_dev: f("sk_buff", "dev"),
        skb_sk: f("sk_buff", "sk"),
        skb_head: f("sk_buff", "head"),
        skb_data: f("sk_buff", "data"),
        skb_len: f("sk_buff", "len"),
        skb_data_len: f("sk_buff", "data_len"),
        skb_network_header: f("sk_buff", "network_header"),
        skb_mac_header: f("sk_buff", "mac_header"),
        skb_transport_header: f("sk_buff", "transport_header"),
        skb_protocol: f("sk_buff", "protocol"),
        dev_ifindex: f("net_device", "ifindex"),
        dev_nd_net: f("net_device", "nd_net.net"),
        net_inum: f("net", "ns.inum"),
        sk_net: f("sock", "__sk_common.skc_net.net"),
        sk_family: f("sock", "__sk_common.skc_family"),
        state_hook: f("nf_hook_state", "hook"),
        state_pf: f("nf_hook_state", "pf"),
        state_in: f("nf_hook_state", "in"),
        state_out: f("nf_hook_state", "out"),
        state_net: f("nf_hook_state", "net"),
        // In nf_tables' own BTF: filled by the verdicts collector where used.
        nft_pkt_skb: 0,
        nft_pkt_state: 0,
        nft_base_chain: 0,
        nft_base_priority: 0,
        hook_entries_num: 0,
        hook_entries_hooks: 0,
        hook_entry_size: 0,
        hook_entry_priv: 0,
        hook_ops_priority: 0,
    };
    (offsets, missing)
}

/// Follows typedefs and qualifiers to the type they name.
fn strip(btf: &Btf, mut t: Type) -> Result<Type> {
    loop {
        match t {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                t = btf.resolve_chained_type(t.as_btf_type().expect("has btf type"))?;
            }
            _ => return Ok(t),
        }
    }
}

fn find_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("struct {name} not in kernel BTF"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("struct {name} not in kernel BTF"))
}

/// Size in bytes of `struct name`.
pub fn struct_size(btf: &Btf, name: &str) -> Result<u32> {
    Ok(find_struct(btf, name)?.size() as u32)
}

/// Byte offset of `path` (dot-separated member names) in `struct name`,
/// looking through anonymous unions and structs as C does.
pub fn member_offset(btf: &Btf, name: &str, path: &str) -> Result<u32> {
    offset_in(btf, find_struct(btf, name)?, name, path)
}

/// [`member_offset`] in `s`, the struct called `name`.
fn offset_in(btf: &Btf, mut s: btf_rs::Struct, name: &str, path: &str) -> Result<u32> {
    let mut offset = 0;
    let mut segments = path.split('.').peekable();
    while let Some(seg) = segments.next() {
        let (bits, ty) = find_member(btf, &s, seg)?
            .ok_or_else(|| anyhow!("kernel BTF: struct {name} has no member {path}"))?;
        if bits % 8 != 0 {
            bail!("kernel BTF: {name}.{path} is a bitfield");
        }
        offset += bits / 8;
        if segments.peek().is_some() {
            s = match strip(btf, ty)? {
                Type::Struct(inner) | Type::Union(inner) => inner,
                _ => bail!("kernel BTF: {name}.{path}: {seg} is not a struct"),
            };
        }
    }
    Ok(offset)
}

/// Bit offset and type of member `want` of `s`, searching anonymous members too.
fn find_member(btf: &Btf, s: &btf_rs::Struct, want: &str) -> Result<Option<(u32, Type)>> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m)?;
        if name == want {
            return Ok(Some((m.bit_offset(), ty)));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = strip(btf, ty)?
            && let Some((bits, t)) = find_member(btf, &inner, want)?
        {
            return Ok(Some((m.bit_offset() + bits, t)));
        }
    }
    Ok(None)
}

/// How many arguments BTF tracepoint `name` passes its programs (the
/// prototype of `btf_trace_<name>` without its leading context pointer);
/// `None` if the kernel has no such tracepoint.
pub fn tracepoint_args(btf: &Btf, name: &str) -> Option<usize> {
    let typedef = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Typedef(_)))?;
    let mut t = btf.resolve_chained_type(typedef.as_btf_type()?).ok()?;
    if let Type::Ptr(_) = t {
        t = btf.resolve_chained_type(t.as_btf_type()?).ok()?;
    }
    match t {
        Type::FuncProto(proto) => Some(proto.parameters.len().saturating_sub(1)),
        _ => None,
    }
}

/// Values of `enum name`, as (name, value).
pub fn enum_values(btf: &Btf, name: &str) -> Result<Vec<(String, u64)>> {
    for t in btf
        .resolve_types_by_name(name)
        .with_context(|| format!("enum {name} not in kernel BTF"))?
    {
        match t {
            Type::Enum(e) => {
                return e
                    .members
                    .iter()
                    .map(|m| Ok((btf.resolve_name(m)?, m.val() as u64)))
                    .collect();
            }
            Type::Enum64(e) => {
                return e
                    .members
                    .iter()
                    .map(|m| Ok((btf.resolve_name(m)?, m.val())))
                    .collect();
            }
            _ => {}
        }
    }
    Err(anyhow!("enum {name} not in kernel BTF"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets_are_plausible() {
        let btf = load(Path::new(VMLINUX)).unwrap();
        let (o, missing) = offsets(&btf);
        assert!(missing.is_empty(), "{missing:?}");
        // Every sk_buff field lies inside the struct, and distinct fields differ.
        let skb = [
            o.skb_dev,
            o.skb_sk,
            o.skb_head,
            o.skb_data,
            o.skb_len,
            o.skb_data_len,
            o.skb_network_header,
            o.skb_mac_header,
            o.skb_transport_header,
            o.skb_protocol,
        ];
        let mut sorted = skb.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), skb.len(), "{o:?}");
        assert!(skb.iter().all(|&x| x < 256), "{o:?}");
        // `dev` shares its anonymous union with `dev_scratch`: same offset.
        assert_eq!(
            member_offset(&btf, "sk_buff", "dev_scratch").unwrap(),
            o.skb_dev
        );
        assert!(member_offset(&btf, "sk_buff", "no_such_field").is_err());
    }

    /// The file mapped, its copy mapped (kernels before 6.16 cannot map
    /// the file) and the file parsed whole, btf-rs's default, read alike.
    #[test]
    fn mapped_file_and_copy_read_as_the_parsed_file() {
        let parsed = Btf::from_file(VMLINUX).unwrap();
        let file = load(Path::new(VMLINUX)).unwrap();
        let copy = mapped_copy(Path::new(VMLINUX)).unwrap();
        let prog_types = enum_values(&parsed, "bpf_prog_type").unwrap();
        assert!(prog_types.len() > 10, "{prog_types:?}");
        for btf in [&file, &copy] {
            assert_eq!(offsets(btf), offsets(&parsed));
            assert_eq!(enum_values(btf, "bpf_prog_type").unwrap(), prog_types);
            assert_eq!(
                tracepoint_args(btf, "kfree_skb"),
                tracepoint_args(&parsed, "kfree_skb")
            );
        }
    }

    #[test]
    fn tracepoint_arguments_from_the_running_kernel() {
        let btf = load(Path::new(VMLINUX)).unwrap();
        // kfree_skb(skb, location, reason, rx_sk) since 6.12, without rx_sk before.
        assert!(tracepoint_args(&btf, "kfree_skb").is_some_and(|n| n >= 3));
        assert_eq!(tracepoint_args(&btf, "icmp_send"), Some(3));
        assert_eq!(tracepoint_args(&btf, "no_such_tracepoint"), None);
    }
}
