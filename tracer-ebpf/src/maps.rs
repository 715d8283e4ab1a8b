//! State shared by several programs.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use tracer_ebpf::{Config, NF_NO_TABLE, Offsets, counter};

/// Per-CPU counts of events the programs could not record (full maps, lost events).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Inodes of the traced namespaces: what the tracepoint programs, which see
/// the whole host, count.
#[map]
pub static TRACED_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn traced(netns_inode: u32) -> bool {
    TRACED_NETNS.get_ptr(&netns_inode).is_some()
}

/// Set by userspace at load time. It lives in `.rodata`, which the verifier
/// treats as constant, so branches on it cost nothing at run time.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    offsets: Offsets {
        skb_dev: 0,
        skb_sk: 0,
        skb_head: 0,
        skb_data: 0,
        skb_len: 0,
        skb_data_len: 0,
        skb_network_header: 0,
        skb_mac_header: 0,
        skb_transport_header: 0,
        skb_protocol: 0,
        dev_ifindex: 0,
        dev_nd_net: 0,
        net_inum: 0,
        sk_net: 0,
        sk_family: 0,
        state_hook: 0,
        state_pf: 0,
        state_in: 0,
        state_out: 0,
        state_net: 0,
        nft_pkt_skb: 0,
        nft_pkt_state: 0,
        nft_base_chain: 0,
        nft_base_priority: 0,
        hook_entries_num: 0,
        hook_entries_hooks: 0,
        hook_entry_size: 0,
        hook_entry_priv: 0,
        hook_ops_priority: 0,
    },
    vxlan_ports: [4789, 0, 0, 0, 0, 0, 0, 0],
    reason_consumed: 0,
    reason_not_dropped: 0,
    nf_priority: [NF_NO_TABLE; 32],
    capture_snaplen: 0,
    capture_rate: 0,
    kern_ctx: 0,
    _pad: 0,
};

/// Reads a field of [`CONFIG`]: `config!(offsets.skb_dev)`. Volatile so that
/// the compiler reads the loaded value rather than folding the default.
macro_rules! config {
    ($($field:tt)+) => {
        // SAFETY: CONFIG is a static: always valid to read.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field)+) }
    };
}
pub(crate) use config;

/// Zeroes a map key with 4-byte stores. `*key = Key { .., ..Default::default() }`
/// compiles to a call to a `memset` that writes one byte per loop turn:
/// hundreds of instructions on every packet for a 104-byte flow key.
#[inline(always)]
pub fn zero<T: Copy>(key: &mut T) {
    zero_raw(key);
}

/// Zeroes `slot` in place without `memset` (see [`zero`]) and returns it;
/// for the plain integer structs kernel and userspace share. In place: a
/// zeroed value returned by value is copied with a `memset` again.
#[inline(always)]
pub fn zeroed<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    zero_raw(slot.as_mut_ptr());
    // SAFETY: every byte was written, and all-zero is a valid T for these structs.
    unsafe { slot.assume_init_mut() }
}

#[inline(always)]
fn zero_raw<T>(p: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    let words = p.cast::<u32>();
    for i in 0..size_of::<T>() / 4 {
        // Volatile, or the compiler merges the stores back into a memset.
        // SAFETY: i < size_of::<T>() / 4 and T is 4-aligned: each word is inside *p.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// `*dst = *src` two bytes at a time: for structs the compiler would copy
/// with a byte-at-a-time `memmove` (when it cannot tell they do not overlap).
#[inline(always)]
pub fn copy<T: Copy>(dst: &mut T, src: &T) {
    copy_as::<u16, T>(dst, src);
}

/// `*dst = *src` one `W` at a time, with volatile accesses the compiler
/// cannot merge back into a `memmove`.
#[inline(always)]
fn copy_as<W: Copy, T: Copy>(dst: &mut T, src: &T) {
    const {
        assert!(size_of::<T>().is_multiple_of(size_of::<W>()) && align_of::<T>() >= align_of::<W>())
    };
    let (d, s) = ((dst as *mut T).cast::<W>(), (src as *const T).cast::<W>());
    for i in 0..size_of::<T>() / size_of::<W>() {
        // SAFETY: i < size_of::<T>() / size_of::<W>() and T is at least
        // W-aligned: each word is inside both structs.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
    }
}

/// This CPU's word for [`store_fence`] and [`as_scalar`].
#[map]
static FENCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Waits until this CPU's earlier stores have reached its cache: an atomic
/// add (a `lock add` on x86, a full barrier there) to a per-CPU word.
#[inline(always)]
pub fn store_fence() {
    if let Some(word) = FENCE.get_ptr_mut(0) {
        // SAFETY: an atomic add of 0 to this CPU's word of the map, valid
        // during the program's run; BPF_XADD, which every kernel accepts.
        unsafe {
            core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) word, v = in(reg) 0u64,
                options(nostack));
        }
    }
}

/// `p` as a number the verifier lets the program compute with: a pointer
/// it knows by BTF type may be stored and compared but not hashed, and a
/// load from map memory is a number whatever was stored there.
#[inline(always)]
pub fn as_scalar(p: u64) -> u64 {
    match FENCE.get_ptr_mut(0) {
        // SAFETY: this CPU's word of the map, valid during the program's run;
        // volatile so that the store and load are not folded away.
        Some(word) => unsafe {
            word.write_volatile(p);
            word.read_volatile()
        },
        None => 0,
    }
}

#[inline(always)]
pub fn count(index: u32) {
    count_n(index, 1);
}

#[inline(always)]
pub fn count_n(index: u32, n: u64) {
    if let Some(v) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the map's value for this CPU, valid during the program's run.
        unsafe { *v += n };
    }
}

/// Declares a double-buffered hash map: two maps the programs fill in turn
/// and a one-entry array saying which (userspace's `DoubleBuffer` counts it
/// up, waits for running programs, and drains the other). Defines
/// `$generation()`, the count now (its parity is the buffer to write to), and
/// `$buffer(g)`. Per-CPU maps: the flows, which are many, count in slots
/// of their own instead (flows.rs).
macro_rules! double_buffered {
    ($key:ty => $value:ty, $entries:expr,
     $m0:ident, $m1:ident, $gen:ident, $generation:ident, $buffer:ident) => {
        #[aya_ebpf::macros::map]
        static $m0: aya_ebpf::maps::PerCpuHashMap<$key, $value> =
            aya_ebpf::maps::PerCpuHashMap::with_max_entries($entries, 0);
        #[aya_ebpf::macros::map]
        static $m1: aya_ebpf::maps::PerCpuHashMap<$key, $value> =
            aya_ebpf::maps::PerCpuHashMap::with_max_entries($entries, 0);
        #[aya_ebpf::macros::map]
        static $gen: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::with_max_entries(1, 0);

        #[inline(always)]
        fn $generation() -> u32 {
            $gen.get(0).copied().unwrap_or(0)
        }

        #[inline(always)]
        fn $buffer(generation: u32) -> &'static aya_ebpf::maps::PerCpuHashMap<$key, $value> {
            if generation & 1 == 1 { &$m1 } else { &$m0 }
        }
    };
}
pub(crate) use double_buffered;

/// What [`upsert`] did.
#[derive(PartialEq, Eq)]
pub enum Upsert {
    Updated,
    Inserted,
    /// The map is full: nothing was recorded.
    Full,
}

/// Applies `apply` to this CPU's value of `key`, inserting the key first if
/// it is new.
#[inline(always)]
pub fn upsert<K, V: Copy>(map: &PerCpuHashMap<K, V>, key: &K, apply: impl Fn(&mut V)) -> Upsert {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: the map's value for this CPU, valid during the program's run;
        // no other reference to it exists while `apply` runs.
        apply(unsafe { &mut *v });
        return Upsert::Updated;
    }
    let mut slot = MaybeUninit::uninit();
    let v: &mut V = zeroed(&mut slot);
    apply(v);
    if map.insert(key, v, BPF_NOEXIST as u64).is_ok() {
        return Upsert::Inserted;
    }
    // Another CPU may have inserted the key meanwhile; otherwise the map is full.
    match map.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: the map's value for this CPU, valid during the program's run;
            // no other reference to it exists while `apply` runs.
            apply(unsafe { &mut *v });
            Upsert::Updated
        }
        None => Upsert::Full,
    }
}
