use tracer_ebpf::{FlowId, LINK_ETHERNET};

use super::*;
use crate::collectors::drops::{DropCounts, DropRow};

/// Records each `write` call, to check that every block is one.
#[derive(Default)]
struct Writes(Vec<Vec<u8>>);

impl Write for Writes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture(iface: &str, link: u32, data: &[u8], orig_len: u32) -> Capture {
    Capture {
        netns: "hb".into(),
        id: FlowId::default(),
        iface: Some(iface.into()),
        reason: Some("NETFILTER_DROP".into()),
        location: "nft_do_chain+0x46f".into(),
        ts_ns: 0x1_0000_0002,
        link,
        orig_len,
        data: data.to_vec(),
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Options of a block body from `at`: (code, value).
fn options(b: &[u8], mut at: usize) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let code = u16::from_le_bytes([b[at], b[at + 1]]);
        let len = u16::from_le_bytes([b[at + 2], b[at + 3]]) as usize;
        if code == 0 {
            return out;
        }
        out.push((code, b[at + 4..at + 4 + len].to_vec()));
        at += 4 + len.next_multiple_of(4);
    }
}

#[test]
fn blocks_are_whole_writes_and_say_where_each_drop_was() {
    let mut sink = PcapSink::new(Writes::default(), 64).unwrap();
    let ip = [0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 17];
    let first = Report {
        scope: Scope::First,
        captures: vec![
            capture("ul0", LINK_ETHERNET, &[0xaa; 17], 300),
            capture("v0", LINK_RAW_IP, &ip, 28),
        ],
        ..Report::default()
    };
    sink.report(&first).unwrap();
    let drop = |iface: &str, packets| DropRow {
        netns: "hb".into(),
        iface: Some(iface.into()),
        id: FlowId::default(),
        reason: Some("NETFILTER_DROP".into()),
        location: "x".into(),
        fragment: None,
        counts: DropCounts { packets, bytes: 0 },
    };
    let total = Report {
        scope: Scope::Total,
        drops: vec![drop("ul0", 5), drop("v0", 1), drop("eth9", 2)],
        ..Report::default()
    };
    sink.report(&total).unwrap();

    let blocks = &sink.out.0;
    let kinds: Vec<u32> = blocks.iter().map(|b| le32(b, 0)).collect();
    assert_eq!(kinds, [SHB, IDB, EPB, IDB, EPB, IDB, ISB, ISB, ISB]);
    for b in blocks {
        assert_eq!(b.len() % 4, 0);
        assert_eq!(le32(b, 4) as usize, b.len());
        assert_eq!(le32(b, b.len() - 4) as usize, b.len());
    }
    assert_eq!(le32(&blocks[0], 8), 0x1A2B_3C4D);
    // The first packet: on interface 0, its bytes as captured, its whole length kept.
    let epb = &blocks[2];
    assert_eq!(
        (le32(epb, 8), le32(epb, 12), le32(epb, 16)),
        (0, 1, 2),
        "interface, timestamp high and low"
    );
    assert_eq!((le32(epb, 20), le32(epb, 24)), (17, 300));
    assert_eq!(&epb[28..45], &[0xaa; 17]);
    let comment = &options(epb, 28 + 20)[0];
    assert_eq!(comment.0, OPT_COMMENT);
    assert_eq!(
        String::from_utf8_lossy(&comment.1),
        "drop reason=NETFILTER_DROP location=nft_do_chain+0x46f netns=hb iface=ul0"
    );
    // The second starts at its IP header: a zero Ethernet header is added.
    let epb = &blocks[4];
    assert_eq!(le32(epb, 8), 1);
    assert_eq!((le32(epb, 20), le32(epb, 24)), (24, 42));
    assert_eq!(
        &epb[28..42],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00]
    );
    assert_eq!(&epb[42..52], &ip);
    // Interface names, and statistics: counted, not written, written.
    let name = |b: &Vec<u8>| String::from_utf8(options(b, 16)[0].1.clone()).unwrap();
    assert_eq!(
        [name(&blocks[1]), name(&blocks[3]), name(&blocks[5])],
        ["hb/ul0", "hb/v0", "hb/eth9"]
    );
    let stats: Vec<(u64, u64, u64)> = blocks[6..]
        .iter()
        .map(|b| {
            let o = options(b, 20);
            let get = |code| {
                let v = &o.iter().find(|(c, _)| *c == code).unwrap().1;
                u64::from_le_bytes(v[..8].try_into().unwrap())
            };
            (get(4), get(5), get(8))
        })
        .collect();
    assert_eq!(stats, [(5, 4, 1), (1, 0, 1), (2, 2, 0)]);
}

#[test]
fn an_empty_run_is_a_valid_file() {
    let mut sink = PcapSink::new(Writes::default(), 256).unwrap();
    sink.report(&Report {
        scope: Scope::Total,
        ..Report::default()
    })
    .unwrap();
    assert_eq!(sink.out.0.len(), 1, "the section header only");
    assert_eq!(le32(&sink.out.0[0], 0), SHB);
}
