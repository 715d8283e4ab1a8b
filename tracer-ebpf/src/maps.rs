//! State shared by several programs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_ebpf::{Config, Offsets, counter};

/// Per-CPU counts of events the programs could not record (full maps, lost events).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

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
    },
    vxlan_ports: [4789, 0, 0, 0, 0, 0, 0, 0],
};

/// Reads a field of [`CONFIG`]: `config!(offsets.skb_dev)`. Volatile so that
/// the compiler reads the loaded value rather than folding the default.
macro_rules! config {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field)+) }
    };
}
pub(crate) use config;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(index) {
        unsafe { *v += 1 };
    }
}
