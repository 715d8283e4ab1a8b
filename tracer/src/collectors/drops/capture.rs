//! The bytes of dropped packets (`--pcap-drops`), from the ring buffer the
//! `kfree_skb` program fills when capture is on.

use std::os::fd::{AsFd as _, BorrowedFd};

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tracer_ebpf::CaptureEvent;

use crate::collectors::take_map;

/// Ring buffer bytes when capture is on: about 1,800 packets of slack
/// between two reads (entries have a fixed size, the largest snap length).
pub const RING_BYTES: u32 = 4 << 20;

pub struct Captures {
    ring: RingBuf<MapData>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns: the programs' clock to wall time.
    to_wall: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Captures {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Captures {
            ring: take_map(ebpf, "CAPTURE_EVENTS", RingBuf::try_from)?,
            to_wall: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Hands each pending capture to `f`, with its time in ns since the Unix epoch.
    pub fn read(&mut self, mut f: impl FnMut(&CaptureEvent, u64)) {
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<CaptureEvent>() {
                continue;
            }
            // SAFETY: the program wrote a whole CaptureEvent, which is Pod
            // (its unused data bytes are whatever the ring held: still bytes).
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CaptureEvent>()) };
            let wall = (e.ts_ns as i128 + self.to_wall).max(0) as u64;
            f(&e, wall);
        }
    }
}
