//! Netfilter verdicts: observer programs (BPF_PROG_TYPE_NETFILTER) linked
//! just before and just after a table's priority at each hook. A packet that
//! entered the table but never came out was dropped (or stolen) by it.
//!
//! aya 0.14 cannot load this program type, so these are compiled in an ELF
//! section aya accepts (`classifier`) and loaded by tracer's own loader with
//! the netfilter type; they never run as TC programs. They always accept.
//!
//! Kernels before 6.4 have no netfilter programs: there fentry and fexit
//! programs on nf_tables' `nft_do_chain` see each base chain's packet and
//! verdict instead (see [`nft_chain_entry`]), and the same rows come out.
//! Without nf_tables' BTF (5.10), kprobes on `nf_hook_slow` and
//! `nft_do_chain` do the same (see [`nft_chain_kprobe`]).

use aya_ebpf::{
    macros::{classifier, fentry, fexit, kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TcContext},
};
use tracer_ebpf::{
    CacheSet, NF_TABLES, VERDICT_CACHE_SLOTS, VerdictKey, VerdictSlot, VerdictStats, cache_sets,
    counter, hook, table,
};

use crate::{
    cache::{self, Found},
    frags, head,
    kernel::{Btf, Mem, Probe, parse_skb},
    maps::{self, Upsert, config, count, count_n, double_buffered, traced, upsert, zero},
};

const VERDICT_MAP_ENTRIES: u32 = 16384;
const NF_ACCEPT: i32 = 1;

double_buffered!(VerdictKey => VerdictStats, VERDICT_MAP_ENTRIES,
    VERDICTS_0, VERDICTS_1, VERDICT_GENERATION, verdict_generation, verdicts);
/// The key of the packet last seen entering a table on this CPU, so that
/// the program after the table reuses it instead of parsing the packet again.
#[map]
static VERDICT_SCRATCH: PerCpuArray<VerdictKey> = PerCpuArray::with_max_entries(1, 0);
#[map]
static VERDICT_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);
/// The observers' per-CPU cache in front of the verdict maps: a half per
/// generation parity (see [`VerdictSlot`]).
#[map]
static VERDICT_CACHE: PerCpuArray<CacheSet<VerdictSlot>> =
    PerCpuArray::with_max_entries(2 * cache_sets(VERDICT_CACHE_SLOTS), 0);

/// Which packet [`VERDICT_SCRATCH`] describes, and the map generation its
/// entry was counted in (so that its exit is counted in the same one).
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    skb: u64,
    /// With fexit: the first and the last base chain of the table's band
    /// this packet met, and whether the last one accepted it.
    first_chain: u64,
    last_chain: u64,
    generation: u32,
    hook: u8,
    table: u8,
    accepted: u8,
    _pad: u8,
}

impl Pending {
    /// Starts describing a packet. Field by field: a struct literal with
    /// zeroes compiles to a byte-wise `memset`.
    #[inline(always)]
    fn begin(
        &mut self,
        skb: u64,
        chain: u64,
        generation: u32,
        hook: u8,
        table: u8,
        accepted: bool,
    ) {
        zero(self);
        self.skb = skb;
        // Volatile: two constant-zero stores (the observers' `chain`) merge
        // into a `memset` otherwise.
        // SAFETY: plain stores to fields of `self`.
        unsafe {
            (&raw mut self.first_chain).write_volatile(chain);
            (&raw mut self.last_chain).write_volatile(chain);
        }
        (self.generation, self.hook, self.table) = (generation, hook, table);
        self.accepted = accepted as u8;
    }
}

/// `struct bpf_nf_ctx`.
#[repr(C)]
struct NfCtx {
    state: u64,
    skb: u64,
}

macro_rules! observers {
    ($($before:ident, $after:ident => $table:expr;)*) => {$(
        #[classifier]
        #[inline(always)]
        pub fn $before(ctx: TcContext) -> i32 {
            observe(ctx.skb.skb as *const NfCtx, $table, false);
            NF_ACCEPT
        }

        #[classifier]
        #[inline(always)]
        pub fn $after(ctx: TcContext) -> i32 {
            observe(ctx.skb.skb as *const NfCtx, $table, true);
            NF_ACCEPT
        }
    )*};
}

observers! {
    nf_filter_in, nf_filter_out => table::FILTER;
    nf_raw_in, nf_raw_out => table::RAW;
    nf_mangle_in, nf_mangle_out => table::MANGLE;
    nf_nat_in, nf_nat_out => table::NAT;
    nf_security_in, nf_security_out => table::SECURITY;
}

#[inline(always)]
fn observe(ctx: *const NfCtx, table: u8, after: bool) {
    // SAFETY: a netfilter program's context is a valid `struct bpf_nf_ctx`.
    let (state, skb) = unsafe { ((*ctx).state, (*ctx).skb) };
    let (Some(key), Some(pending)) = (
        VERDICT_SCRATCH.get_ptr_mut(0),
        VERDICT_PENDING.get_ptr_mut(0),
    ) else {
        return;
    };
    // SAFETY: the maps' one slot for this CPU, used by the netfilter observers only,
    // which do not nest on a CPU.
    let (key, pending) = unsafe { (&mut *key, &mut *pending) };
    let hook: u8 = Btf::get(state, config!(offsets.state_hook)).unwrap_or(0);
    let current = verdict_generation();
    // Leaving the table it was last seen entering on this CPU: same key, same generation.
    let resumed = after && pending.skb == skb && pending.hook == hook && pending.table == table;
    let generation = if resumed {
        pending.generation
    } else {
        fill_key::<Btf>(key, state, skb, hook, table);
        // Written a byte or two at a time, read below eight at a time: see
        // the same fence in the TC programs.
        maps::store_fence();
        current
    };
    if !after {
        pending.begin(skb, 0, generation, hook, table, false);
    }
    let (entered, left) = (!after as u64, after as u64);
    // A packet that entered before userspace switched generations leaves
    // into the map: its generation's half of the cache is being read.
    if generation != current {
        add_to_map(generation, key, entered, left);
        return;
    }
    let slot = match cache::find::<_, VERDICT_CACHE_SLOTS>(&VERDICT_CACHE, key, generation) {
        Some(Found::Hit(slot)) => {
            slot.stats.entered += entered;
            slot.stats.left += left;
            return;
        }
        Some(Found::Evict(slot)) => {
            // Another flow had the slot: its counts go to the map of its generation.
            add_to_map(generation, &slot.key, slot.stats.entered, slot.stats.left);
            slot
        }
        Some(Found::Empty(slot)) => slot,
        None => return,
    };
    slot.generation = generation;
    cache::store(&mut slot.key, key);
    // Volatile: two constant-zero stores (the counts an observer does not
    // add to) merge into a byte-wise `memset` otherwise.
    // SAFETY: plain stores to fields of the slot.
    unsafe {
        (&raw mut slot.stats.entered).write_volatile(entered);
        (&raw mut slot.stats.left).write_volatile(left);
        (&raw mut slot.stats.unleft).write_volatile(0);
    }
}

/// Adds packets that entered and left to `key`'s entry in the verdict map of `generation`.
#[inline(always)]
fn add_to_map(generation: u32, key: &VerdictKey, entered: u64, left: u64) {
    let full = upsert(verdicts(generation), key, |v: &mut VerdictStats| {
        v.entered += entered;
        v.left += left;
    }) == Upsert::Full;
    if full {
        count_n(counter::VERDICT_MAP_FULL, entered + left);
    }
}

/// Fills `key` for packet `skb` at `state`, read through `M`: direct loads
/// where the verifier knows the pointers' types (the netfilter programs'
/// context), the helper otherwise (fexit: on 6.1 direct loads through the
/// skb of a module's struct gave an unparsable packet).
#[inline(always)]
fn fill_key<M: Mem>(key: &mut VerdictKey, state: u64, skb: u64, hook: u8, table: u8) {
    let pf: u8 = M::get(state, config!(offsets.state_pf)).unwrap_or(0);
    let net: u64 = M::get(state, config!(offsets.state_net)).unwrap_or(0);
    // The device a user thinks of for each hook: where it came in, or goes out.
    let dev_off = match hook {
        hook::LOCAL_OUT | hook::POST_ROUTING => config!(offsets.state_out),
        _ => config!(offsets.state_in),
    };
    let dev: u64 = M::get(state, dev_off).unwrap_or(0);
    zero(key);
    key.netns_inode = M::get(net, config!(offsets.net_inum)).unwrap_or(0);
    key.ifindex = M::get(dev, config!(offsets.dev_ifindex)).unwrap_or(0);
    (key.family, key.hook, key.table) = (pf, hook, table);
    let Some(buf) = head::buffer(&head::NF_HEAD) else {
        return;
    };
    let parsed = parse_skb::<M>(skb, &mut key.id, buf);
    frags::attribute(&mut key.id, &parsed);
    frags::strip_packet_flags(&mut key.id);
}

const NF_VERDICT_MASK: u32 = 0xff;
const NF_ACCEPT_VERDICT: u32 = 1;

/// Calls of `nft_do_chain` under way on a CPU deeper than this (a softirq
/// interrupting one in process context is one level) are not counted.
const MAX_NESTING: u32 = 4;

/// One call of `nft_do_chain` from its entry to its exit: what it is about.
#[repr(C)]
#[derive(Clone, Copy)]
struct Call {
    key: VerdictKey,
    skb: u64,
    chain: u64,
    hook: u8,
    table: u8,
    /// The chain is of a counted table and the packet in a traced namespace.
    counted: u8,
    _pad: [u8; 5],
}

/// The calls under way on a CPU; they end in the reverse order they began.
#[repr(C)]
#[derive(Clone, Copy)]
struct Calls {
    depth: u32,
    _pad: u32,
    calls: [Call; MAX_NESTING as usize],
}

#[map]
static NFT_CALLS: PerCpuArray<Calls> = PerCpuArray::with_max_entries(1, 0);

/// `nft_do_chain(pkt, priv)` is about to run base chain `priv` on a packet:
/// read the packet now. When a rule drops it, nft_do_chain frees the skb
/// itself before returning (6.1 and later), so its exit cannot read it.
#[fentry(function = "nft_do_chain")]
#[inline(always)]
pub fn nft_chain_entry(ctx: FEntryContext) -> i32 {
    let pkt: *const u8 = ctx.arg(0);
    let chain: *const u8 = ctx.arg(1);
    chain_entry(pkt as u64, chain as u64);
    0
}

/// `nft_do_chain` returned the verdict of the base chain its entry saw.
/// Counted like the observers count a table: a packet entered the table's
/// band at its first chain there, and left it if the band's last chain it
/// met accepted it. Several chains of one band (say iptables-nft's `filter
/// INPUT` and an `inet` table's `input` at priority 0) are one table, as for
/// the observers.
#[fexit(function = "nft_do_chain")]
#[inline(always)]
pub fn nft_chain_exit(ctx: FExitContext) -> i32 {
    let verdict: u32 = ctx.arg(2);
    chain_verdict(verdict);
    0
}

#[inline(always)]
fn chain_entry(pkt: u64, chain: u64) {
    let Some(call) = push_call() else {
        return;
    };
    // Through the helper: `priv` is a `void *`, and the types of `pkt` come
    // from a module's BTF.
    let skb: u64 = Probe::get(pkt, config!(offsets.nft_pkt_skb)).unwrap_or(0);
    let state: u64 = Probe::get(pkt, config!(offsets.nft_pkt_state)).unwrap_or(0);
    // `priv` is the base chain's `struct nft_chain`, inside its `struct nft_base_chain`.
    let base = chain.wrapping_sub(config!(offsets.nft_base_chain) as u64);
    let Some(priority) = Probe::get::<i32>(base, config!(offsets.nft_base_priority)) else {
        return;
    };
    begin_call(call, skb, state, chain, priority);
}

/// A new call of `nft_do_chain` on this CPU, not counted until
/// [`begin_call`] says so; `None` when nested too deep.
#[inline(always)]
fn push_call() -> Option<&'static mut Call> {
    let calls = NFT_CALLS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; entries and exits on a CPU are strictly nested.
    let calls = unsafe { &mut *calls };
    let depth = calls.depth;
    calls.depth = depth + 1;
    if depth >= MAX_NESTING {
        return None;
    }
    // Masked in the register that indexes (older verifiers).
    let call = calls
        .calls
        .get_mut(head::mask::<{ MAX_NESTING as usize - 1 }>(depth as usize))?;
    call.counted = 0;
    Some(call)
}

/// Describes `call`: base chain `chain` at `priority` runs on `skb` at hook `state`.
#[inline(always)]
fn begin_call(call: &mut Call, skb: u64, state: u64, chain: u64, priority: i32) {
    if skb == 0 || state == 0 {
        return;
    }
    let hook: u8 = Probe::get(state, config!(offsets.state_hook)).unwrap_or(0xff);
    let Some(table) = table_at(priority, hook) else {
        return;
    };
    fill_key::<Probe>(&mut call.key, state, skb, hook, table);
    if !traced(call.key.netns_inode) {
        return;
    }
    (call.skb, call.chain, call.hook, call.table) = (skb, chain, hook, table);
    call.counted = 1;
}

/// Hook entries of one `nf_hook_slow` call the kprobe looks a chain up in, at most.
const MAX_HOOK_ENTRIES: u64 = 16;

/// One `nf_hook_slow(skb, state, entries, start)` under way.
#[repr(C)]
#[derive(Clone, Copy)]
struct HookCall {
    skb: u64,
    state: u64,
    entries: u64,
}

/// The `nf_hook_slow` calls under way on a CPU (br_netfilter runs IP
/// hooks inside bridge hooks).
#[repr(C)]
#[derive(Clone, Copy)]
struct HookCalls {
    depth: u32,
    _pad: u32,
    calls: [HookCall; MAX_NESTING as usize],
}

#[map]
static HOOK_CALLS: PerCpuArray<HookCalls> = PerCpuArray::with_max_entries(1, 0);

/// Without nf_tables' BTF (5.10) there is no fentry on it and no layout of
/// its structs; `nf_hook_slow`'s arguments are vmlinux's, and the
/// `nft_do_chain` kprobe finds its chain among this call's hook entries.
#[kprobe]
#[inline(always)]
pub fn nf_hook_slow_entry(ctx: ProbeContext) -> u32 {
    let (Some(skb), Some(state), Some(entries)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    let Some(calls) = HOOK_CALLS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; entries and returns on a CPU are strictly nested.
    let calls = unsafe { &mut *calls };
    let depth = calls.depth;
    calls.depth = depth + 1;
    if depth < MAX_NESTING
        && let Some(call) = calls
            .calls
            .get_mut(head::mask::<{ MAX_NESTING as usize - 1 }>(depth as usize))
    {
        *call = HookCall {
            skb,
            state,
            entries,
        };
    }
    0
}

#[kretprobe]
#[inline(always)]
pub fn nf_hook_slow_exit(_ctx: RetProbeContext) -> u32 {
    if let Some(calls) = HOOK_CALLS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let calls = unsafe { &mut *calls };
        calls.depth = calls.depth.saturating_sub(1);
    }
    0
}

/// `nft_do_chain(pkt, priv)` seen by a kprobe: the packet and the hook
/// state are those of the `nf_hook_slow` call under way, the chain's
/// priority that of the hook entry whose `priv` it is.
#[kprobe]
#[inline(always)]
pub fn nft_chain_kprobe(ctx: ProbeContext) -> u32 {
    let Some(call) = push_call() else {
        return 0;
    };
    let (Some(chain), Some(hooks)) = (ctx.arg::<u64>(1), HOOK_CALLS.get_ptr(0)) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    let hooks = unsafe { &*hooks };
    if hooks.depth == 0 || hooks.depth > MAX_NESTING {
        return 0;
    }
    let Some(&h) = hooks.calls.get(head::mask::<{ MAX_NESTING as usize - 1 }>(
        hooks.depth as usize - 1,
    )) else {
        return 0;
    };
    if let Some(priority) = chain_priority(h.entries, chain) {
        begin_call(call, h.skb, h.state, chain, priority);
    }
    0
}

#[kretprobe]
#[inline(always)]
pub fn nft_chain_kretprobe(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret();
    chain_verdict(verdict);
    0
}

/// The priority of the hook entry of `entries` whose `priv` is `chain`:
/// `orig_ops[i]`, the array right after the entries' `hooks[num]`.
#[inline(always)]
fn chain_priority(entries: u64, chain: u64) -> Option<i32> {
    let num: u16 = Probe::get(entries, config!(offsets.hook_entries_num))?;
    let num = num as u64;
    let hooks = entries + config!(offsets.hook_entries_hooks) as u64;
    let size = config!(offsets.hook_entry_size) as u64;
    let mut i = 0u64;
    while i < MAX_HOOK_ENTRIES {
        if i >= num {
            return None;
        }
        let private: u64 = Probe::get(hooks + i * size, config!(offsets.hook_entry_priv))?;
        if private == chain {
            let ops: u64 = Probe::get(hooks + num * size + i * 8, 0)?;
            return Probe::get::<i32>(ops, config!(offsets.hook_ops_priority));
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn chain_verdict(verdict: u32) {
    let (Some(calls), Some(pending)) = (NFT_CALLS.get_ptr_mut(0), VERDICT_PENDING.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: this CPU's slots. The observers, which also use VERDICT_PENDING,
    // are never attached with these programs.
    let (calls, pending) = unsafe { (&mut *calls, &mut *pending) };
    // An exit without its entry (attached in between): nothing to count.
    if calls.depth == 0 {
        return;
    }
    let depth = calls.depth - 1;
    calls.depth = depth;
    if depth >= MAX_NESTING {
        return;
    }
    let call = &calls.calls[(depth & (MAX_NESTING - 1)) as usize];
    if call.counted == 0 {
        return;
    }
    let (skb, chain, hook, table) = (call.skb, call.chain, call.hook, call.table);
    let accepted = verdict & NF_VERDICT_MASK == NF_ACCEPT_VERDICT;
    // The next chain of the same band for the same packet. A later packet
    // may get the same skb address, but it starts again at the first chain.
    let same_packet = pending.skb == skb
        && pending.hook == hook
        && pending.table == table
        && chain != pending.first_chain
        && chain != pending.last_chain;
    if same_packet {
        if pending.accepted != 0 && !accepted {
            // The band's earlier chain accepted it, this one did not: it did not leave.
            let map = verdicts(pending.generation);
            if upsert(map, &call.key, |v: &mut VerdictStats| v.unleft += 1) == Upsert::Full {
                count(counter::VERDICT_MAP_FULL);
            }
        }
        (pending.last_chain, pending.accepted) = (chain, accepted as u8);
        return;
    }
    let generation = verdict_generation();
    pending.begin(skb, chain, generation, hook, table, accepted);
    let full = upsert(verdicts(generation), &call.key, |v: &mut VerdictStats| {
        v.entered += 1;
        if accepted {
            v.left += 1;
        }
    }) == Upsert::Full;
    if full {
        count(counter::VERDICT_MAP_FULL);
    }
}

/// The counted table whose priority band `priority` at `hook` is, from the
/// priorities userspace wrote into the configuration.
#[inline(always)]
fn table_at(priority: i32, hook: u8) -> Option<u8> {
    if hook > hook::POST_ROUTING {
        return None;
    }
    let row = hook as usize * NF_TABLES;
    let mut t = 0;
    while t < NF_TABLES {
        // Masked in the register that indexes: older verifiers lose bounds
        // that are only checked on another one.
        let i = core::hint::black_box(row + t) & 31;
        // SAFETY: i < 32, the length of `nf_priority`.
        let p = unsafe {
            core::ptr::read_volatile(
                (&raw const crate::maps::CONFIG.nf_priority)
                    .cast::<i32>()
                    .add(i),
            )
        };
        if p == priority {
            return Some(t as u8);
        }
        t += 1;
    }
    None
}
