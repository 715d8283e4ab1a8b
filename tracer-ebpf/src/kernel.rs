//! Reading kernel structs at offsets userspace took from BTF.
//!
//! Two ways: [`Probe`] calls `bpf_probe_read_kernel` and works on any
//! address; [`Btf`] is a plain load, which the verifier allows (and makes
//! fault-safe) when the base is a BTF-typed pointer it knows, such as the
//! skb a BTF tracepoint or a netfilter program is given, and the offset a
//! constant (the offsets live in read-only, frozen `.rodata`). A load costs
//! a nanosecond, a helper call tens.

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_probe_read_kernel};
use tracer_ebpf::{
    FlowId, KFUNC_CAST_TO_KERN_CTX,
    parse::{ETH_P_IP, ETH_P_IPV6, Parsed, Reader, parse_ethernet, parse_from_l3},
};

use crate::{
    head::{Head, HeadReader},
    maps::config,
};

/// A way to read kernel memory.
pub trait Mem {
    /// Reads a `T` at `base + off`; `None` for a NULL base or a fault.
    fn get<T: Copy>(base: u64, off: u32) -> Option<T>;
}

/// Through `bpf_probe_read_kernel`: any address.
pub struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn get<T: Copy>(base: u64, off: u32) -> Option<T> {
        if base == 0 {
            return None;
        }
        // SAFETY: the helper checks the address and fails instead of faulting.
        unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
    }
}

/// A direct load: `base` must be a pointer the verifier knows by its BTF type
/// (and every pointer read through it the same), `off` a constant.
pub struct Btf;

impl Mem for Btf {
    #[inline(always)]
    fn get<T: Copy>(base: u64, off: u32) -> Option<T> {
        if base == 0 {
            return None;
        }
        // SAFETY: the verifier allows this load only from a BTF-typed pointer at a
        // constant offset, and turns a fault into a zero read.
        Some(unsafe { core::ptr::read_volatile((base as *const u8).add(off as usize).cast::<T>()) })
    }
}

/// The kernel's `struct sk_buff` behind a TC program's context, as a
/// BTF-typed pointer that [`Btf`] reads with plain loads: a call of
/// `bpf_cast_to_kern_ctx` once userspace has made the placeholder one (see
/// [`KFUNC_CAST_TO_KERN_CTX`]). Only where [`Config::kern_ctx`] is set.
///
/// [`Config::kern_ctx`]: tracer_ebpf::Config::kern_ctx
#[inline(always)]
pub fn kern_ctx(ctx: *mut __sk_buff) -> u64 {
    let skb: u64;
    // SAFETY: a call that takes the context in r1 and returns in r0; r1-r5
    // are clobbered as by any call. The verifier checks the real call.
    unsafe {
        core::arch::asm!(
            "call {id}",
            id = const KFUNC_CAST_TO_KERN_CTX,
            inlateout("r1") ctx => _,
            lateout("r0") skb,
            lateout("r2") _, lateout("r3") _, lateout("r4") _, lateout("r5") _,
        );
    }
    skb
}

/// `skb->dev`.
#[inline(always)]
pub fn skb_dev<M: Mem>(skb: u64) -> u64 {
    M::get(skb, config!(offsets.skb_dev)).unwrap_or(0)
}

/// Inode of the network namespace of `dev` (`dev->nd_net.net->ns.inum`).
#[inline(always)]
pub fn dev_netns_inode<M: Mem>(dev: u64) -> u32 {
    let net: u64 = M::get(dev, config!(offsets.dev_nd_net)).unwrap_or(0);
    M::get(net, config!(offsets.net_inum)).unwrap_or(0)
}

/// Namespace inode and ifindex of `skb`: its device's, or without a device
/// its socket's namespace and ifindex 0. `None` for an skb that is not a
/// network packet: no device and a socket that is not IPv4/IPv6 (netlink
/// and unix messages, whose queues are purged when their socket closes).
#[inline(always)]
pub fn skb_place<M: Mem>(skb: u64) -> Option<(u32, u32)> {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let dev = skb_dev::<M>(skb);
    if dev != 0 {
        let ifindex = M::get(dev, config!(offsets.dev_ifindex)).unwrap_or(0);
        return Some((dev_netns_inode::<M>(dev), ifindex));
    }
    let sk: u64 = M::get(skb, config!(offsets.skb_sk)).unwrap_or(0);
    let family: u16 = M::get(sk, config!(offsets.sk_family)).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some((sk_netns_inode::<M>(sk), 0))
}

/// Inode of the network namespace of socket `sk` (`sk->__sk_common.skc_net.net->ns.inum`).
#[inline(always)]
pub fn sk_netns_inode<M: Mem>(sk: u64) -> u32 {
    let net: u64 = M::get(sk, config!(offsets.sk_net)).unwrap_or(0);
    M::get(net, config!(offsets.net_inum)).unwrap_or(0)
}

/// Fills `id` from the headers of `skb`, from its network header if set,
/// else from its MAC header; leaves it zeroed if neither is usable.
#[inline(always)]
pub fn parse_skb<M: Mem>(skb: u64, id: &mut FlowId, buf: &mut Head) -> Parsed {
    let head: u64 = M::get(skb, config!(offsets.skb_head)).unwrap_or(0);
    let data: u64 = M::get(skb, config!(offsets.skb_data)).unwrap_or(0);
    let len: u32 = M::get(skb, config!(offsets.skb_len)).unwrap_or(0);
    let data_len: u32 = M::get(skb, config!(offsets.skb_data_len)).unwrap_or(0);
    if head == 0 || data < head || data_len > len {
        return Parsed::default();
    }
    // The paged part is out of reach; headers live in the linear part.
    let linear_end = data + (len - data_len) as u64;
    let network: u16 = M::get(skb, config!(offsets.skb_network_header)).unwrap_or(0);
    let mac: u16 = M::get(skb, config!(offsets.skb_mac_header)).unwrap_or(u16::MAX);
    let ports = config!(vxlan_ports);
    // Unset headers are ~0 (mac) or 0 (network: nothing starts at the very head).
    if network != 0 && network != u16::MAX && head + (network as u64) < linear_end {
        let start = head + network as u64;
        let pkt = HeadReader::from_kernel(start, linear_end - start, buf);
        let protocol: u16 = u16::from_be(M::get(skb, config!(offsets.skb_protocol)).unwrap_or(0));
        let ethertype = match protocol {
            ETH_P_IP | ETH_P_IPV6 => protocol,
            // Not set yet on some paths: the version nibble says which.
            _ => match pkt.read::<1>(0) {
                Some([b]) if b >> 4 == 4 => ETH_P_IP,
                Some([b]) if b >> 4 == 6 => ETH_P_IPV6,
                _ => return Parsed::default(),
            },
        };
        parse_from_l3(&pkt, 0, ethertype, &ports, id)
    } else if mac != u16::MAX && head + (mac as u64) < linear_end {
        let start = head + mac as u64;
        let pkt = HeadReader::from_kernel(start, linear_end - start, buf);
        parse_ethernet(&pkt, &ports, id)
    } else {
        Parsed::default()
    }
}
