//! Dropped packets as pcapng (`--pcap-drops`), written by hand: the four
//! block types needed (section header, interface description, enhanced
//! packet, interface statistics) are a few dozen lines, and writing each
//! block with one `write(2)` is what keeps a killed run's file valid up to
//! its last block, which a buffering library would not promise.
//!
//! One interface per (namespace, device). Every packet is Ethernet: one
//! captured from its network header (no MAC header yet, as on output) gets
//! a zero Ethernet header, which its comment says. The totals report ends
//! the file with each interface's statistics: drops counted there, packets
//! written, and the difference (over `--pcap-rate`, or the ring buffer full).

use std::{
    collections::HashMap,
    io::{self, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use tracer_ebpf::LINK_RAW_IP;

use crate::output::{Report, Scope, Sink};

/// A dropped packet's first bytes and where and why it was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub netns: String,
    /// The dropped packet's flow, as drop rows key it (for `--filter`).
    pub id: tracer_ebpf::FlowId,
    /// The skb's device at the drop, if it had one.
    pub iface: Option<String>,
    /// `NETFILTER_DROP`, ...; `None` on kernels without drop reasons.
    pub reason: Option<String>,
    /// Kernel function and offset that dropped it.
    pub location: String,
    /// When, in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// `LINK_ETHERNET` or `LINK_RAW_IP`: where `data` starts.
    pub link: u32,
    /// Length of the packet from where `data` starts.
    pub orig_len: u32,
    /// Its first bytes, up to the snap length.
    pub data: Vec<u8>,
}

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_COMMENT: u16 = 1;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

/// One pcapng block: type, length, `body`, options, length again.
struct Block(Vec<u8>);

impl Block {
    fn new(kind: u32) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend(kind.to_le_bytes());
        b.extend([0; 4]);
        Block(b)
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }

    /// Bytes padded to 32 bits.
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend(v);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// A timestamp in nanoseconds as pcapng stores it: high and low 32 bits.
    fn ts(&mut self, ns: u64) -> &mut Self {
        self.u32((ns >> 32) as u32).u32(ns as u32)
    }

    fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        self.u16(code).u16(value.len() as u16).bytes(value)
    }

    fn finish(mut self) -> Vec<u8> {
        self.u16(0).u16(0); // opt_endofopt
        let len = (self.0.len() + 4) as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0.extend(len.to_le_bytes());
        self.0
    }
}

/// Interface statistics of one (namespace, device).
#[derive(Debug, Default, Clone, Copy)]
struct Interface {
    id: u32,
    written: u64,
}

/// Writes captured drops as pcapng to `W`, a block per `write` call.
pub struct PcapSink<W: Write> {
    out: W,
    snaplen: u32,
    start_ns: u64,
    interfaces: HashMap<(String, Option<String>), Interface>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl<W: Write> PcapSink<W> {
    /// Writes the section header at once, so that even an empty run leaves a valid file.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut b = Block::new(SHB);
        b.u32(0x1A2B_3C4D).u16(1).u16(0).u32(u32::MAX).u32(u32::MAX); // length unknown
        b.option(
            4,
            format!("tracer {}", env!("CARGO_PKG_VERSION")).as_bytes(),
        ); // shb_userappl
        Self::put(&mut out, b)?;
        Ok(PcapSink {
            out,
            snaplen,
            start_ns: now_ns(),
            interfaces: HashMap::new(),
        })
    }

    fn put(out: &mut W, b: Block) -> io::Result<()> {
        out.write_all(&b.finish())?;
        out.flush()
    }

    /// The interface of (`netns`, `iface`), described in the file the first time.
    fn interface(&mut self, netns: &str, iface: Option<&str>) -> io::Result<&mut Interface> {
        let key = (netns.to_string(), iface.map(str::to_string));
        if !self.interfaces.contains_key(&key) {
            let id = self.interfaces.len() as u32;
            let mut b = Block::new(IDB);
            // An Ethernet header may be added to a packet captured from its network header.
            b.u16(LINKTYPE_ETHERNET).u16(0).u32(self.snaplen + 14);
            b.option(2, format!("{netns}/{}", iface.unwrap_or("-")).as_bytes()); // if_name
            let description = match iface {
                Some(i) => format!("drops on device {i} in network namespace {netns}"),
                None => format!("drops without a device in network namespace {netns}"),
            };
            b.option(3, description.as_bytes()); // if_description
            b.option(9, &[9]); // if_tsresol: nanoseconds
            Self::put(&mut self.out, b)?;
            self.interfaces
                .insert(key.clone(), Interface { id, written: 0 });
        }
        Ok(self.interfaces.get_mut(&key).expect("inserted above"))
    }

    fn packet(&mut self, c: &Capture) -> io::Result<()> {
        let id = self.interface(&c.netns, c.iface.as_deref())?.id;
        let mut comment = format!(
            "drop reason={} location={} netns={} iface={}",
            c.reason.as_deref().unwrap_or("-"),
            c.location,
            c.netns,
            c.iface.as_deref().unwrap_or("-"),
        );
        let mut data = Vec::with_capacity(c.data.len() + 14);
        let mut orig_len = c.orig_len;
        if c.link == LINK_RAW_IP {
            let ethertype = match c.data.first() {
                Some(b) if b >> 4 == 6 => ETHERTYPE_IPV6,
                _ => ETHERTYPE_IPV4,
            };
            data.extend([0; 12]);
            data.extend(ethertype);
            orig_len += 14;
            comment.push_str(" (no MAC header yet: a zero Ethernet header added)");
        }
        data.extend(&c.data);
        let mut b = Block::new(EPB);
        b.u32(id)
            .ts(c.ts_ns)
            .u32(data.len() as u32)
            .u32(orig_len)
            .bytes(&data);
        b.option(OPT_COMMENT, comment.as_bytes());
        Self::put(&mut self.out, b)?;
        self.interface(&c.netns, c.iface.as_deref())?.written += 1;
        Ok(())
    }

    /// Each interface's statistics, from the run's drop totals.
    fn statistics(&mut self, r: &Report) -> io::Result<()> {
        let mut dropped: HashMap<(String, Option<String>), u64> = HashMap::new();
        for d in &r.drops {
            *dropped
                .entry((d.netns.clone(), d.iface.clone()))
                .or_default() += d.counts.packets;
        }
        // Devices with drops and nothing written get their interface too.
        let mut keys: Vec<_> = dropped.keys().cloned().collect();
        keys.sort();
        for (netns, iface) in &keys {
            self.interface(netns, iface.as_deref())?;
        }
        let mut all: Vec<(_, Interface)> = self
            .interfaces
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_by_key(|(_, i)| i.id);
        let now = now_ns();
        for (key, i) in all {
            let counted = dropped.get(&key).copied().unwrap_or(0).max(i.written);
            let skipped = counted - i.written;
            let mut b = Block::new(ISB);
            b.u32(i.id).ts(now);
            b.option(
                OPT_COMMENT,
                format!(
                    "{counted} drops counted, {} written, {skipped} not written (over \
                     --pcap-rate, or the ring buffer was full: see tracer's health row)",
                    i.written
                )
                .as_bytes(),
            );
            b.option(2, &ts_option(self.start_ns)); // isb_starttime
            b.option(3, &ts_option(now)); // isb_endtime
            b.option(4, &counted.to_le_bytes()); // isb_ifrecv
            b.option(5, &skipped.to_le_bytes()); // isb_ifdrop
            b.option(8, &i.written.to_le_bytes()); // isb_usrdeliv
            Self::put(&mut self.out, b)?;
        }
        Ok(())
    }
}

fn ts_option(ns: u64) -> [u8; 8] {
    let mut v = [0; 8];
    v[..4].copy_from_slice(&((ns >> 32) as u32).to_le_bytes());
    v[4..].copy_from_slice(&(ns as u32).to_le_bytes());
    v
}

impl<W: Write> Sink for PcapSink<W> {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        for c in &r.captures {
            self.packet(c)?;
        }
        if r.scope == Scope::Total {
            self.statistics(r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
