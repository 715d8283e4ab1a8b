//! The first bytes of a packet, copied with one helper call per program run
//! so that parsing reads memory instead of calling a helper per header.
//! Enough for the headers of a VXLAN packet and of the packet it carries;
//! headers beyond (long IPv6 extension chains) are not parsed.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_skb_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use tracer_ebpf::parse::Reader;

pub const HEAD: usize = 128;
/// Room past [`HEAD`] for the largest single read (an IPv4 header, 20
/// bytes): a read at any offset below `HEAD` stays inside the buffer, which
/// is what older verifiers check (see [`HeadReader::read_into`]).
const SLACK: usize = 32;

#[repr(C)]
pub struct Head([u8; HEAD + SLACK]);

// One buffer per kind of program, per CPU: a program may run while another
// kind is interrupted on the same CPU.
#[map]
pub static TC_HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static DROP_HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static NF_HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static ICMP_HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's buffer of `map`.
#[inline(always)]
pub fn buffer(map: &'static PerCpuArray<Head>) -> Option<&'static mut Head> {
    // SAFETY: the map's one slot for this CPU; each program kind has its own map.
    map.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Packet bytes copied into a [`Head`]; reads past them fail.
pub struct HeadReader<'a> {
    head: &'a Head,
    len: usize,
}

impl<'a> HeadReader<'a> {
    /// The start of the packet of a TC program.
    #[inline(always)]
    pub fn from_skb(ctx: &TcContext, head: &'a mut Head) -> Self {
        let len = (ctx.len() as usize).min(HEAD);
        let ok = len > 0
            // SAFETY: the helper writes at most `len` <= HEAD bytes into the buffer.
            && unsafe {
                bpf_skb_load_bytes(
                    ctx.skb.skb.cast(),
                    0,
                    head.0.as_mut_ptr().cast(),
                    len as u32,
                )
            } == 0;
        HeadReader {
            head,
            len: if ok { len } else { 0 },
        }
    }

    /// `len` bytes of kernel memory at `start` (an skb's linear data).
    #[inline(always)]
    pub fn from_kernel(start: u64, len: u64, head: &'a mut Head) -> Self {
        let len = (len as usize).min(HEAD);
        let ok = len > 0
            // SAFETY: the helper checks the source address and fails instead of faulting.
            && unsafe { bpf_probe_read_kernel_buf(start as *const u8, &mut head.0[..len]) }.is_ok();
        HeadReader {
            head,
            len: if ok { len } else { 0 },
        }
    }
}

impl Reader for HeadReader<'_> {
    #[inline(always)]
    fn read_into<const N: usize>(&self, off: u32, dst: &mut [u8; N]) -> bool {
        const { assert!(N <= SLACK) };
        let off = off as usize;
        if off > HEAD - N || off + N > self.len {
            return false;
        }
        // The check above bounds `off`, but the compiler may keep the
        // checked value in one register (or a stack slot) and address with
        // another, which the verifiers of 6.1 and 6.12 then see as
        // unbounded. Mask the very value the access uses: the mask cannot
        // be folded away after an opaque reload, and `HEAD - 1 + N` fits
        // the buffer.
        let off = core::hint::black_box(off) & (HEAD - 1);
        // SAFETY: off < HEAD and N <= SLACK: inside the HEAD + SLACK bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(self.head.0.as_ptr().add(off), dst.as_mut_ptr(), N)
        };
        true
    }
}
