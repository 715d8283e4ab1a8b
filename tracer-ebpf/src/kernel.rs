//! Reading kernel structs at offsets userspace took from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::maps::config;

/// Reads a `T` at `base + off` of kernel memory; `None` for a NULL base or a fault.
#[inline(always)]
pub fn read<T: Copy>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// `skb->dev`.
#[inline(always)]
pub fn skb_dev(skb: u64) -> u64 {
    read(skb, config!(offsets.skb_dev)).unwrap_or(0)
}

/// Inode of the network namespace of `dev` (`dev->nd_net.net->ns.inum`).
#[inline(always)]
pub fn dev_netns_inode(dev: u64) -> u32 {
    let net: u64 = read(dev, config!(offsets.dev_nd_net)).unwrap_or(0);
    read(net, config!(offsets.net_inum)).unwrap_or(0)
}

/// Inode of the network namespace of socket `sk` (`sk->__sk_common.skc_net.net->ns.inum`).
#[inline(always)]
pub fn sk_netns_inode(sk: u64) -> u32 {
    let net: u64 = read(sk, config!(offsets.sk_net)).unwrap_or(0);
    read(net, config!(offsets.net_inum)).unwrap_or(0)
}
