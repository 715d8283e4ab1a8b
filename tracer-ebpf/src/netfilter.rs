//! Netfilter verdicts: observer programs (BPF_PROG_TYPE_NETFILTER) linked
//! just before and just after a table's priority at each hook. A packet that
//! entered the table but never came out was dropped (or stolen) by it.
//!
//! aya 0.14 cannot load this program type, so these are compiled in an ELF
//! section aya accepts (`classifier`) and loaded by tracer's own loader with
//! the netfilter type; they never run as TC programs. They always accept.

use aya_ebpf::{
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use tracer_ebpf::{VerdictKey, VerdictStats, counter, hook, table};

use crate::{
    frags, head,
    kernel::{Btf, Mem, parse_skb},
    maps::{Upsert, config, count, double_buffered, upsert, zero},
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

/// Which packet [`VERDICT_SCRATCH`] describes, and the map generation its
/// entry was counted in (so that its exit is counted in the same one).
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    skb: u64,
    generation: u32,
    hook: u8,
    table: u8,
    _pad: [u8; 2],
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
        pub fn $before(ctx: TcContext) -> i32 {
            observe(ctx.skb.skb as *const NfCtx, $table, false);
            NF_ACCEPT
        }

        #[classifier]
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
        fill_key(key, state, skb, hook, table);
        current
    };
    if !after {
        *pending = Pending {
            skb,
            generation,
            hook,
            table,
            _pad: [0; 2],
        };
    }
    let map = verdicts(generation);
    let full = upsert(map, &*key, |v: &mut VerdictStats| {
        if after {
            v.left += 1;
        } else {
            v.entered += 1;
        }
    }) == Upsert::Full;
    if full {
        count(counter::VERDICT_MAP_FULL);
    }
}

#[inline(always)]
fn fill_key(key: &mut VerdictKey, state: u64, skb: u64, hook: u8, table: u8) {
    let pf: u8 = Btf::get(state, config!(offsets.state_pf)).unwrap_or(0);
    let net: u64 = Btf::get(state, config!(offsets.state_net)).unwrap_or(0);
    // The device a user thinks of for each hook: where it came in, or goes out.
    let dev_off = match hook {
        hook::LOCAL_OUT | hook::POST_ROUTING => config!(offsets.state_out),
        _ => config!(offsets.state_in),
    };
    let dev: u64 = Btf::get(state, dev_off).unwrap_or(0);
    zero(key);
    key.netns_inode = Btf::get(net, config!(offsets.net_inum)).unwrap_or(0);
    key.ifindex = Btf::get(dev, config!(offsets.dev_ifindex)).unwrap_or(0);
    (key.family, key.hook, key.table) = (pf, hook, table);
    let Some(buf) = head::buffer(&head::NF_HEAD) else {
        return;
    };
    let parsed = parse_skb::<Btf>(skb, &mut key.id, buf);
    frags::attribute(&mut key.id, &parsed);
    frags::strip_packet_flags(&mut key.id);
}
