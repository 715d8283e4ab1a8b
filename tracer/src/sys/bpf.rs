//! The few `bpf(2)` commands aya 0.14 does not offer: batched draining of a
//! hash map, a barrier that waits for running BPF programs to finish, and
//! loading and linking netfilter programs.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`;
    // the kernel zero-fills the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A command that returns a new file descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn map_create(attr: &mut MapCreateAttr) -> io::Result<OwnedFd> {
    bpf_fd(BPF_MAP_CREATE, attr)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    /// `core_relo_cnt` on newer kernels; spelled out so that it is zero.
    _pad: u32,
}

// No implicit padding (see RawTracepointAttr): the sizes are the sums of the fields.
const _: () = assert!(size_of::<ProgLoadAttr>() == 30 * 4);

pub const BPF_PROG_TYPE_TRACING: u32 = 26;
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;
pub const BPF_TRACE_FENTRY: u32 = 24;
pub const BPF_TRACE_FEXIT: u32 = 25;
pub const BPF_NETFILTER: u32 = 45;

/// What a program is loaded as.
#[derive(Debug, Clone, Copy)]
pub struct ProgType<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    /// For tracing programs: the function's BTF type id, and the BTF object
    /// it is in (a module's; `None` for vmlinux).
    pub attach_btf: Option<(u32, Option<BorrowedFd<'a>>)>,
}

/// Loads a program; on failure, loads it again with the verifier's log and
/// returns the error with the log.
pub fn prog_load(
    kind: ProgType,
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let (attach_btf_id, obj) = kind.attach_btf.unwrap_or((0, None));
    let mut attr = ProgLoadAttr {
        prog_type: kind.prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: kind.expected_attach_type,
        attach_btf_id,
        attach_btf_obj_fd: obj.map_or(0, |fd| fd.as_raw_fd() as u32),
        ..Default::default()
    };
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let mut log = vec![0u8; 1 << 20];
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
        let _ = bpf_fd(BPF_PROG_LOAD, &mut attr);
        let log = String::from_utf8_lossy(&log);
        (e, log.trim_end_matches('\0').to_string())
    })
}

#[repr(C)]
#[derive(Default)]
struct NfLinkAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
}

/// Links netfilter program `prog` at (`pf`, `hooknum`, `priority`) in the
/// calling thread's namespace. The link lives as long as the returned fd.
pub fn link_netfilter(
    prog: BorrowedFd<'_>,
    pf: u8,
    hooknum: u8,
    priority: i32,
) -> io::Result<OwnedFd> {
    bpf_fd(
        BPF_LINK_CREATE,
        &mut NfLinkAttr {
            prog_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_NETFILTER,
            pf: pf as u32,
            hooknum: hooknum as u32,
            priority,
            ..Default::default()
        },
    )
}

/// Waits until every BPF program that was running when [`Barrier::wait`] was
/// called has returned.
///
/// The kernel calls `synchronize_rcu()` after an update of a map-of-maps so
/// that userspace knows no program still uses the old inner map (see
/// `maybe_wait_bpf_programs` in kernel/bpf/syscall.c). tc and tracepoint
/// programs run inside RCU read-side sections, so once the update returns, a
/// program that read the old buffer generation has finished writing to it.
pub struct Barrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Barrier {
    pub fn new() -> io::Result<Self> {
        let inner = map_create(&mut MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = map_create(&mut MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        })?;
        Ok(Self { outer, inner })
    }

    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &mut MapElemAttr {
                map_fd: self.outer.as_raw_fd() as u32,
                key: &key as *const u32 as u64,
                value: &value as *const u32 as u64,
                ..Default::default()
            },
        )?;
        Ok(())
    }
}

// Every attribute struct spells out its padding: the kernel refuses
// non-zero bytes past the fields it knows, and `Default` leaves implicit
// padding uninitialised.
#[repr(C)]
#[derive(Default)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<RawTracepointAttr>() == 16);

const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

/// Attaches a loaded fentry/fexit program to the function it was loaded
/// for; the attachment lives as long as the returned fd.
pub fn attach_tracing(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    bpf_fd(
        BPF_RAW_TRACEPOINT_OPEN,
        &mut RawTracepointAttr {
            prog_fd: prog.as_raw_fd() as u32,
            ..Default::default()
        },
    )
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

#[repr(C)]
#[derive(Default)]
struct GetIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// The kernel's BTF object named `name` (a module's, such as `nf_tables`),
/// open; `None` if no loaded BTF has that name (the module is not loaded,
/// or the kernel, before 5.11, has no module BTF).
pub fn kernel_btf_by_name(name: &str) -> Option<OwnedFd> {
    let mut id = 0;
    loop {
        let mut next = GetIdAttr {
            id,
            ..Default::default()
        };
        bpf(BPF_BTF_GET_NEXT_ID, &mut next).ok()?;
        id = next.next_id;
        let Ok(fd) = bpf_fd(
            BPF_BTF_GET_FD_BY_ID,
            &mut GetIdAttr {
                id,
                ..Default::default()
            },
        ) else {
            continue; // gone meanwhile
        };
        let mut buf = [0u8; 64];
        let mut info = BtfInfo {
            name: buf.as_mut_ptr() as u64,
            name_len: buf.len() as u32,
            ..Default::default()
        };
        let ok = bpf(
            BPF_OBJ_GET_INFO_BY_FD,
            &mut InfoAttr {
                bpf_fd: fd.as_raw_fd() as u32,
                info_len: size_of::<BtfInfo>() as u32,
                info: &mut info as *mut BtfInfo as u64,
            },
        )
        .is_ok();
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if ok && info.kernel_btf != 0 && &buf[..end] == name.as_bytes() {
            return Some(fd);
        }
    }
}

/// The distance between a per-CPU map entry's values as the kernel hands
/// them out: each is padded to 8 bytes.
pub fn percpu_stride(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

/// Removes every entry of a per-CPU hash map, calling `f(key, values)` for
/// each: `ncpus` values, [`percpu_stride`] apart.
///
/// Only safe from lost updates when no program writes to the map meanwhile;
/// callers switch the programs to the other buffer and wait on a [`Barrier`] first.
pub fn drain_hash(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    ncpus: usize,
    mut f: impl FnMut(&[u8], &[u8]),
) -> io::Result<usize> {
    let stride = ncpus * percpu_stride(value_size);
    let mut chunk: usize = 1024;
    let mut keys = vec![0u8; key_size * chunk];
    let mut values = vec![0u8; stride * chunk];
    let mut token = [0u8; 8];
    let mut first = true;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let done = match bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A hash bucket holds more entries than `count`: retry with room for them.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                chunk *= 2;
                keys.resize(key_size * chunk, 0);
                values.resize(stride * chunk, 0);
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = attr.count as usize;
        for i in 0..n {
            f(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * stride..(i + 1) * stride],
            );
        }
        total += n;
        first = false;
        if done {
            return Ok(total);
        }
    }
}

/// The values of a BPF array created with `BPF_F_MMAPABLE`, mapped into
/// this process as far as they are used: read and zeroed in place, without
/// a syscall per value.
///
/// Mapped in chunks of `size_of::<T>()` pages (a page's worth of values), as
/// [`Mapped::reach`] asks: the kernel puts every page of a mapping in it at
/// once, so mapping all of a 65,536-slot array would add its megabytes to
/// tracer's resident memory whether used or not.
pub struct Mapped<T> {
    map: OwnedFd,
    /// Values in the array.
    len: usize,
    page: usize,
    chunks: Vec<Chunk>,
    _values: std::marker::PhantomData<T>,
}

struct Chunk {
    values: std::ptr::NonNull<u64>,
    bytes: usize,
}

impl<T: aya::Pod> Mapped<T> {
    /// The `len` values of array `map`, none mapped yet.
    pub fn new(map: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // The kernel lays values out every round_up(size, 8) bytes: T's own size.
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        debug_assert!(page.is_power_of_two());
        Ok(Mapped {
            map: map.try_clone_to_owned()?,
            len,
            page,
            chunks: Vec::new(),
            _values: std::marker::PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values per chunk.
    fn per_chunk(&self) -> usize {
        self.page
    }

    /// Maps the values below `end` (at most [`Mapped::len`]) that are not yet.
    pub fn reach(&mut self, end: usize) -> io::Result<()> {
        let end = end.min(self.len);
        let array_bytes = (self.len * size_of::<T>()).div_ceil(self.page) * self.page;
        while self.chunks.len() * self.per_chunk() < end {
            let offset = self.chunks.len() * self.per_chunk() * size_of::<T>();
            let bytes = (self.per_chunk() * size_of::<T>()).min(array_bytes - offset);
            // SAFETY: a new shared mapping of pages of the array, inside it
            // (`offset` and `bytes` are page multiples within its size);
            // nothing else in this process refers to that range.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.map.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let values = std::ptr::NonNull::new(p.cast()).expect("mmap returned a mapping");
            self.chunks.push(Chunk { values, bytes });
        }
        Ok(())
    }

    /// Where value `i` is, if it is mapped.
    fn words(&self, i: usize) -> Option<*mut u64> {
        // A page is a power of two: a shift and a mask, not a division per
        // value (tens of thousands of values are read every interval).
        let per = self.per_chunk();
        let chunk = self.chunks.get(i >> per.trailing_zeros())?;
        let n = size_of::<T>() / 8;
        let at = (i & (per - 1)) * n;
        // SAFETY: the value's n words lie inside the chunk's mapping
        // (checked first), 8-aligned.
        ((at + n) * 8 <= chunk.bytes).then(|| unsafe { chunk.values.as_ptr().add(at) })
    }

    /// Value `i`, if it is mapped; whoever writes it must not meanwhile.
    pub fn get(&self, i: usize) -> Option<T> {
        let words = self.words(i)?;
        // SAFETY: `words` is the value's place in the mapping; T is Pod, so
        // any bytes are a valid T.
        Some(unsafe { words.cast::<T>().read_volatile() })
    }

    /// Value `i` if it is not all zero, zeroed in place; `None` also past
    /// what is mapped. Only while no program writes to the array (the
    /// caller switched them to another).
    pub fn take(&self, i: usize) -> Option<T> {
        let words = self.words(i)?;
        let n = size_of::<T>() / 8;
        // SAFETY: the value's n words, in the mapping (see `words`).
        if (0..n).all(|w| unsafe { words.add(w).read_volatile() } == 0) {
            return None;
        }
        // SAFETY: as above; T is Pod, so any bytes are a valid T.
        let value = unsafe { words.cast::<T>().read_volatile() };
        for w in 0..n {
            // SAFETY: as above.
            unsafe { words.add(w).write_volatile(0) };
        }
        Some(value)
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        for c in &self.chunks {
            // SAFETY: a mapping made in `reach`, unmapped once.
            unsafe { libc::munmap(c.values.as_ptr().cast(), c.bytes) };
        }
    }
}

/// Time spent in program `fd` and its number of runs, as the kernel counts
/// them while BPF statistics are on (`kernel.bpf_stats_enabled`).
pub fn prog_run_stats(fd: BorrowedFd<'_>) -> io::Result<(std::time::Duration, u64)> {
    // SAFETY: bpf_prog_info is plain integers and arrays: all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((
        std::time::Duration::from_nanos(info.run_time_ns),
        info.run_cnt,
    ))
}

/// `kernel.bpf_stats_enabled`: 1 makes the kernel count BPF programs' run time
/// (a BPF_ENABLE_STATS descriptor does too, unseen here).
pub fn stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::percpu_stride;

    #[test]
    fn per_cpu_values_are_padded_to_8_bytes() {
        assert_eq!(percpu_stride(12), 16);
        assert_eq!(percpu_stride(48), 48);
        assert_eq!(percpu_stride(1), 8);
    }
}
