//! Types shared by the eBPF programs and userspace.
//!
//! Every struct is `#[repr(C)]` with explicit padding fields, so its layout is
//! the same on both sides and no byte of a map key is left uninitialised (an
//! uninitialised padding byte in a hash key would split one flow into many).
#![no_std]

pub mod cache_set;
pub mod parse;

/// Address family of a [`Tuple`].
pub const FAMILY_NONE: u8 = 0;
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// [`Tuple::flags`]: the ports are valid (TCP/UDP header was read).
pub const TUPLE_PORTS: u8 = 1 << 0;
/// [`Tuple::flags`]: a first fragment (offset 0, more fragments follow).
pub const TUPLE_FRAG_FIRST: u8 = 1 << 1;
/// [`Tuple::flags`]: a non-first fragment; it carries no L4 header.
pub const TUPLE_FRAG_REST: u8 = 1 << 2;
/// [`Tuple::flags`]: IPv4 "don't fragment" is set.
pub const TUPLE_DF: u8 = 1 << 3;

/// An L3/L4 flow tuple. IPv4 addresses use the first 4 bytes of `src`/`dst`.
/// Ports are in host byte order and zero unless [`TUPLE_PORTS`] is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub flags: u8,
    pub _pad: u8,
}

/// Bit set in [`FlowId::vni`] when the packet was VXLAN; the low 24 bits are the VNI.
pub const VNI_PRESENT: u32 = 1 << 31;

/// What a packet is: its outer tuple, and for VXLAN the VNI and inner tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub outer: Tuple,
    pub inner: Tuple,
    pub vni: u32,
    pub _pad: u32,
}

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Key of the per-hop flow counters kept by the TC programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Address of the `struct net_device`: unlike the ifindex it is unique
    /// across namespaces. The `DEVICES` map says which device it is.
    pub dev: u64,
    pub ifindex: u32,
    pub dir: u8,
    pub _pad: [u8; 3],
    pub id: FlowId,
}

/// Per-CPU counters of one [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets on the wire: a GSO skb counts as its number of segments.
    pub packets: u64,
    /// Bytes on the wire from the L2 header on, segment headers of GSO skbs included.
    pub bytes: u64,
    pub frags_first: u64,
    pub frags_rest: u64,
    pub df: u64,
    /// Largest packet (one segment of a GSO skb) in bytes from the L2 header on.
    pub max_len: u32,
    pub _pad: u32,
}

/// Slots of the per-CPU flow cache, per map generation. A power of two.
pub const FLOW_CACHE_SLOTS: u32 = 64;

/// Slots of a set of a per-CPU cache: a key may take any of its set's.
pub const CACHE_WAYS: usize = 4;
/// A value of a per-CPU cache map: one set.
pub type CacheSet<T> = [T; CACHE_WAYS];

/// Sets of a cache of `slots` slots per map generation.
pub const fn cache_sets(slots: u32) -> u32 {
    slots / CACHE_WAYS as u32
}

/// One slot of the per-CPU flow cache the TC programs count in before the
/// flow slots: the packets of a flow a CPU keeps seeing are added here without
/// hashing the key; an entry goes to its flow slot's counters when another
/// flow takes its cache slot, and userspace reads the rest with the
/// generation it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// Map generation (as `FLOW_GENERATION` counts) the entry belongs to; an
    /// entry of an older generation is empty. So is one with no packets.
    pub generation: u32,
    /// In a set's first slot: how many times the set gave a slot up to a
    /// new key (see [`cache_set::way`]).
    pub evictions: u32,
    pub key: FlowKey,
    pub stats: FlowStats,
}

/// What a `struct net_device` address in a [`FlowKey`] stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ifindex: u32,
    /// Inode of the device's network namespace (`net->ns.inum`).
    pub netns_inode: u32,
}

/// Key of the drop counters kept by the `kfree_skb` program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// Where the kernel dropped it: the caller of `kfree_skb_reason`.
    pub location: u64,
    /// Inode of the namespace of the skb's device (or socket, without a device).
    pub netns_inode: u32,
    /// The skb's device at the drop; 0 if it had none.
    pub ifindex: u32,
    /// `enum skb_drop_reason`, named by userspace from the kernel's BTF;
    /// [`REASON_NONE`] where the kernel has none.
    pub reason: u32,
    pub _pad: u32,
    pub id: FlowId,
}

/// Slots of the per-CPU drop cache, per map generation. A power of two.
pub const DROP_CACHE_SLOTS: u32 = 16;

/// One slot of the per-CPU cache the `kfree_skb` program counts in before
/// the drop map, as [`FlowSlot`] is for flows: a burst of drops of one flow
/// at one place hashes no key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSlot {
    /// Map generation (as `DROP_GENERATION` counts) the entry belongs to; an
    /// entry of an older generation is empty. So is one with no packets.
    pub generation: u32,
    /// In a set's first slot: how many times the set gave a slot up to a
    /// new key (see [`cache_set::way`]).
    pub evictions: u32,
    pub key: DropKey,
    pub stats: DropStats,
}

/// [`DropKey::reason`] of a drop on a kernel without drop reasons.
pub const REASON_NONE: u32 = u32::MAX;
/// A reason value no drop carries: the `Config` value of a reason the kernel lacks.
pub const REASON_ABSENT: u32 = u32::MAX - 1;

/// Per-CPU counters of one [`DropKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    pub packets: u64,
    /// Bytes of the dropped skbs (`skb->len`).
    pub bytes: u64,
}

/// Netfilter hooks, as `enum nf_inet_hooks` numbers them.
pub mod hook {
    pub const PRE_ROUTING: u8 = 0;
    pub const LOCAL_IN: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const LOCAL_OUT: u8 = 3;
    pub const POST_ROUTING: u8 = 4;
}

/// Netfilter priority bands ("tables") the observers bracket.
pub mod table {
    pub const FILTER: u8 = 0;
    pub const RAW: u8 = 1;
    pub const MANGLE: u8 = 2;
    pub const NAT: u8 = 3;
    pub const SECURITY: u8 = 4;
}

/// Key of the verdict counters kept by the netfilter observer programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub netns_inode: u32,
    /// Input device at prerouting/input/forward, output device at output/postrouting.
    pub ifindex: u32,
    /// `NFPROTO_IPV4` (2) or `NFPROTO_IPV6` (10).
    pub family: u8,
    /// One of [`hook`].
    pub hook: u8,
    /// One of [`table`].
    pub table: u8,
    pub _pad: [u8; 5],
    pub id: FlowId,
}

/// Packets that reached a table (`entered`) and that came out of it (`left`
/// minus `unleft`): the table accepted those and dropped (or stole) the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictStats {
    pub entered: u64,
    pub left: u64,
    /// Packets first counted as `left` that a later chain of the same table
    /// did not let through (fexit on `nft_do_chain` only). Kept apart rather
    /// than subtracted so that no counter of a report can go below zero.
    pub unleft: u64,
}

/// Slots of the per-CPU verdict cache, per map generation. A power of two.
pub const VERDICT_CACHE_SLOTS: u32 = 16;

/// One slot of the per-CPU cache the netfilter observers count in before the
/// verdict map, as [`FlowSlot`] is for flows: a packet entering and leaving
/// a table, and the next packets of its flow, hash no key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictSlot {
    /// Map generation (as `VERDICT_GENERATION` counts) the entry belongs to;
    /// an entry of an older generation is empty. So is one that counted nothing.
    pub generation: u32,
    /// In a set's first slot: how many times the set gave a slot up to a
    /// new key (see [`cache_set::way`]).
    pub evictions: u32,
    pub key: VerdictKey,
    pub stats: VerdictStats,
}

/// [`IcmpKey::dir`]: the error was sent by this namespace's stack (icmp_send).
pub const DIR_SENT: u8 = 2;

/// Key of the ICMP error counters: what an ICMP error said and about which flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IcmpKey {
    pub netns_inode: u32,
    /// Device the error was seen on, or the offending packet's device when sent.
    pub ifindex: u32,
    /// [`DIR_INGRESS`], [`DIR_EGRESS`] (seen on a device) or [`DIR_SENT`].
    pub dir: u8,
    /// [`FAMILY_IPV4`] (ICMP) or [`FAMILY_IPV6`] (ICMPv6).
    pub family: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// MTU announced by "fragmentation needed" / "packet too big"; 0 if none or unknown.
    pub mtu: u32,
    /// The offending packet, from the header the error quotes.
    pub id: FlowId,
}

/// The first drop of a [`DropKey`] not seen before, sent at once through a ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub key: DropKey,
    /// `skb->len` of that drop.
    pub len: u32,
    pub _pad: u32,
}

/// Indices into the `COUNTERS` per-CPU array: events the programs could not record.
pub mod counter {
    /// A flow found no free flow slot: its packets were not counted.
    pub const FLOW_MAP_FULL: u32 = 0;
    /// A drop could not be counted because the drop map was full.
    pub const DROP_MAP_FULL: u32 = 1;
    /// The first drop of a new key could not be announced: the ring buffer was full.
    pub const DROP_EVENTS_LOST: u32 = 2;
    /// A verdict could not be counted because the verdict map was full.
    pub const VERDICT_MAP_FULL: u32 = 3;
    /// A non-first fragment whose first fragment was not seen: counted by addresses only.
    pub const FRAG_UNMATCHED: u32 = 4;
    /// An ICMP error could not be counted because the ICMP map was full.
    pub const ICMP_MAP_FULL: u32 = 5;
    /// A dropped packet not captured (`--pcap-drops`): over the rate limit.
    pub const CAPTURE_RATE_LIMITED: u32 = 6;
    /// A dropped packet not captured: the ring buffer was full, or its bytes unreadable.
    pub const CAPTURE_LOST: u32 = 7;
    /// A device a flow was seen on could not be recorded for naming: the
    /// device map was full. Its rows are named by ifindex alone.
    pub const DEVICE_MAP_FULL: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// Maximum number of UDP ports decoded as VXLAN.
pub const MAX_VXLAN_PORTS: usize = 8;

/// Byte offsets of the kernel struct fields the programs read. Rust eBPF has no
/// CO-RE, so userspace reads them from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_data_len: u32,
    pub skb_network_header: u32,
    pub skb_mac_header: u32,
    pub skb_transport_header: u32,
    pub skb_protocol: u32,
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    pub net_inum: u32,
    pub sk_net: u32,
    pub sk_family: u32,
    pub state_hook: u32,
    pub state_pf: u32,
    pub state_in: u32,
    pub state_out: u32,
    pub state_net: u32,
    /// `struct nft_pktinfo` (nf_tables' own BTF): its skb, and its hook state
    /// (`state`, or `xt.state` before 5.13).
    pub nft_pkt_skb: u32,
    pub nft_pkt_state: u32,
    /// `struct nft_base_chain`: where its `chain` is, and its `ops.priority`.
    pub nft_base_chain: u32,
    pub nft_base_priority: u32,
    /// `struct nf_hook_entries` (vmlinux): `num_hook_entries`, `hooks`, the
    /// size of one `struct nf_hook_entry` and its `priv`; the `priority` of
    /// `struct nf_hook_ops`. What the kprobes on kernels without module BTF
    /// find a base chain's priority with.
    pub hook_entries_num: u32,
    pub hook_entries_hooks: u32,
    pub hook_entry_size: u32,
    pub hook_entry_priv: u32,
    pub hook_ops_priority: u32,
}

/// Load-time configuration of the programs, written into `.rodata` by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub offsets: Offsets,
    /// UDP destination ports decoded as VXLAN; 0 marks an unused slot.
    pub vxlan_ports: [u16; MAX_VXLAN_PORTS],
    /// `SKB_CONSUMED` on the running kernel: frees that are not drops.
    pub reason_consumed: u32,
    /// `SKB_NOT_DROPPED_YET` on the running kernel.
    pub reason_not_dropped: u32,
    /// `[hook * NF_TABLES + table]`: the priority of each counted [`table`]
    /// at each [`hook`] ([`NF_NO_TABLE`] where it is not counted or not
    /// there). Userspace's one table of priorities, for the fexit programs.
    pub nf_priority: [i32; 32],
    /// Bytes of each dropped packet to capture; 0: no capture (`--pcap-drops`).
    pub capture_snaplen: u32,
    /// Dropped packets captured per second and CPU at most; 0: no limit.
    pub capture_rate: u32,
    /// 1: the TC programs' [`KFUNC_CAST_TO_KERN_CTX`] calls were made calls
    /// of the kernel's `bpf_cast_to_kern_ctx` (6.2+), so the programs read
    /// `skb->dev` with a load instead of `bpf_probe_read_kernel`.
    pub kern_ctx: u32,
    pub _pad: u32,
}

/// The immediate of the placeholder helper call the TC programs make where
/// they want `bpf_cast_to_kern_ctx`: userspace rewrites each such call in
/// the object, to that kfunc where the kernel has it and to a plain helper
/// (in a branch the verifier drops, as [`Config::kern_ctx`] is 0) where not.
pub const KFUNC_CAST_TO_KERN_CTX: i32 = 0x7ace_0001;

/// Largest `Config::capture_snaplen`: the ring buffer entries have a fixed size.
pub const CAPTURE_MAX: usize = 2048;

/// [`CaptureEvent::link`]: the bytes start at the Ethernet header.
pub const LINK_ETHERNET: u32 = 1;
/// [`CaptureEvent::link`]: the bytes start at the IPv4 or IPv6 header.
pub const LINK_RAW_IP: u32 = 101;

/// A dropped packet's first bytes (`--pcap-drops`), from the `kfree_skb` program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureEvent {
    pub key: DropKey,
    /// `bpf_ktime_get_ns()` at the drop (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Length of the packet from where the capture starts.
    pub orig_len: u32,
    /// Bytes of `data` that are the packet's: at most the snap length.
    pub cap_len: u32,
    /// [`LINK_ETHERNET`] or [`LINK_RAW_IP`]: pcap's link types.
    pub link: u32,
    pub _pad: u32,
    pub data: [u8; CAPTURE_MAX],
}

/// Tables in [`Config::nf_priority`]'s rows.
pub const NF_TABLES: usize = 5;
/// A priority no chain is counted at.
pub const NF_NO_TABLE: i32 = i32::MIN;

#[cfg(feature = "user")]
// SAFETY: each is `#[repr(C)]` plain integers and arrays with explicit
// padding fields, so every bit pattern is valid and no byte is uninitialised.
mod pod {
    unsafe impl aya::Pod for super::Tuple {}
    unsafe impl aya::Pod for super::FlowId {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowSlot {}
    unsafe impl aya::Pod for super::DeviceInfo {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::DropStats {}
    unsafe impl aya::Pod for super::DropSlot {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::CaptureEvent {}
    unsafe impl aya::Pod for super::VerdictKey {}
    unsafe impl aya::Pod for super::IcmpKey {}
    unsafe impl aya::Pod for super::VerdictStats {}
    unsafe impl aya::Pod for super::VerdictSlot {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    // A size that is not the sum of the fields means the compiler inserted padding.
    #[test]
    fn shared_types_have_no_implicit_padding() {
        assert_eq!(size_of::<Tuple>(), 16 + 16 + 2 + 2 + 1 + 1 + 1 + 1);
        assert_eq!(size_of::<FlowId>(), 40 + 40 + 4 + 4);
        assert_eq!(size_of::<FlowKey>(), 8 + 4 + 1 + 3 + 88);
        assert_eq!(size_of::<FlowStats>(), 5 * 8 + 4 + 4);
        assert_eq!(size_of::<FlowSlot>(), 4 + 4 + 104 + 48);
        assert_eq!(size_of::<VerdictSlot>(), 4 + 4 + 104 + 24);
        assert_eq!(size_of::<DeviceInfo>(), 8);
        assert_eq!(size_of::<Offsets>(), 29 * 4);
        assert_eq!(
            size_of::<Config>(),
            29 * 4 + 2 * MAX_VXLAN_PORTS + 2 * 4 + 32 * 4 + 2 * 4 + 2 * 4
        );
        assert_eq!(size_of::<VerdictKey>(), 4 + 4 + 1 + 1 + 1 + 5 + 88);
        assert_eq!(size_of::<VerdictStats>(), 24);
        assert_eq!(size_of::<IcmpKey>(), 4 + 4 + 1 + 1 + 1 + 1 + 4 + 88);
        assert_eq!(size_of::<DropKey>(), 8 + 4 + 4 + 4 + 4 + 88);
        assert_eq!(size_of::<DropStats>(), 16);
        assert_eq!(size_of::<DropSlot>(), 4 + 4 + 112 + 16);
        assert_eq!(size_of::<DropEvent>(), 112 + 4 + 4);
        assert_eq!(size_of::<CaptureEvent>(), 112 + 8 + 4 * 4 + CAPTURE_MAX);
    }
}
