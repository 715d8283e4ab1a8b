//! The first bytes of a packet, copied with one helper call per program run
//! so that parsing reads memory instead of calling a helper per header.
//! Enough for the headers of a VXLAN packet and of the packet it carries;
//! headers beyond (long IPv6 extension chains) are not parsed. The common
//! packet of a TC program is read where it lies instead ([`Linear`]).

use aya_ebpf::{helpers::bpf_skb_load_bytes, macros::map, maps::PerCpuArray, programs::TcContext};
use tracer_ebpf::parse::{Reader, inplace};

pub const HEAD: usize = 128;
/// Room past [`HEAD`] for the largest single read (an IPv4 header, 20
/// bytes): a read at any offset below `HEAD` stays inside the buffer, which
/// is what older verifiers check (see [`HeadReader::read_into`]).
const SLACK: usize = 32;

#[repr(C)]
pub struct Head {
    /// How many bytes of the packet `bytes` holds. Kept here, in the map
    /// value, and read again by every bounds check: the verifier does not
    /// track map memory, so what a check teaches it about the length does
    /// not stay in its state. Held in a register or on the stack, every
    /// path through the parser would carry its own bounds of the length and
    /// no two could be pruned as equal (the 1M-instruction limit on 6.1).
    len: u32,
    /// Where [`Reader::opaque`] sends an offset through memory.
    scratch: u32,
    bytes: [u8; HEAD + SLACK],
}

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

/// How many bytes of a packet of `len` (> 0) to copy: `min(len, HEAD)`,
/// computed in the register the helper call takes, where the verifiers of
/// 6.1 and older want to see it in 1..=HEAD (a bound checked on another
/// register is lost to them, and they refuse a size that may be 0).
#[inline(always)]
fn copy_size(len: usize) -> usize {
    mask::<{ HEAD - 1 }>(len.min(HEAD) - 1) + 1
}

/// `x & M`, done where the compiler cannot see it (and so cannot drop it
/// when it knows `x <= M` already): in the register the next access uses.
#[inline(always)]
pub fn mask<const M: usize>(x: usize) -> usize {
    let mut v = x as u64;
    // SAFETY: an AND on a register; nothing else is touched.
    unsafe {
        core::arch::asm!("{v} &= {m}", v = inout(reg) v, m = const M, options(pure, nomem, nostack));
    }
    v as usize
}

/// This CPU's buffer of `map`.
#[inline(always)]
// Map memory is written through a shared reference to the map: it is the
// kernel's, one slot per CPU, and each program kind has its own map.
#[allow(clippy::mut_from_ref)]
pub fn buffer(map: &'static PerCpuArray<Head>) -> Option<&'static mut Head> {
    // SAFETY: the map's one slot for this CPU; each program kind has its own map.
    map.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Packet bytes copied into a [`Head`]; reads past them fail.
pub struct HeadReader<'a> {
    head: &'a Head,
}

impl<'a> HeadReader<'a> {
    /// The start of the packet of a TC program.
    #[inline(always)]
    pub fn from_skb(ctx: &TcContext, head: &'a mut Head) -> Self {
        head.len = 0;
        let len = ctx.len() as usize;
        if len > 0 {
            let len = copy_size(len);
            // SAFETY: the helper writes `len` (1..=HEAD) bytes into the buffer.
            let ok = unsafe {
                bpf_skb_load_bytes(
                    ctx.skb.skb.cast(),
                    0,
                    head.bytes.as_mut_ptr().cast(),
                    len as u32,
                )
            } == 0;
            if ok {
                head.len = len as u32;
            }
        }
        HeadReader { head }
    }

    /// `len` bytes of kernel memory at `start` (an skb's linear data).
    #[inline(always)]
    pub fn from_kernel(start: u64, len: u64, head: &'a mut Head) -> Self {
        head.len = 0;
        if len > 0 {
            let len = copy_size(len as usize);
            // SAFETY: the helper checks the source address and fails instead
            // of faulting; it writes `len` (1..=HEAD) bytes into the buffer.
            let ok = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    head.bytes.as_mut_ptr().cast(),
                    len as u32,
                    start as *const aya_ebpf::cty::c_void,
                )
            } == 0;
            if ok {
                head.len = len as u32;
            }
        }
        HeadReader { head }
    }
}

impl Reader for HeadReader<'_> {
    #[inline(always)]
    fn opaque(&self, off: u32) -> u32 {
        let slot = (&raw const self.head.scratch).cast_mut();
        // SAFETY: this CPU's buffer, which only this program uses now; the
        // store and load go through memory, which the verifier does not track.
        unsafe {
            slot.write_volatile(off);
            slot.read_volatile()
        }
    }

    #[inline(always)]
    fn read_into<const N: usize>(&self, off: u32, dst: &mut [u8; N]) -> bool {
        const { assert!(N <= SLACK) };
        let off = off as usize;
        // SAFETY: a plain load of this CPU's buffer.
        let len = unsafe { core::ptr::read_volatile(&self.head.len) } as usize;
        if off > HEAD - N || off + N > len {
            return false;
        }
        // The check above bounds `off`, but the compiler may keep the
        // checked value in one register (or a stack slot) and address with
        // another, which the verifiers of 6.1 and 6.12 then see as
        // unbounded. Mask the very value the access uses: the mask cannot
        // be folded away after an opaque reload, and `HEAD - 1 + N` fits
        // the buffer.
        let off = mask::<{ HEAD - 1 }>(off);
        // SAFETY: off < HEAD and N <= SLACK: inside the HEAD + SLACK bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(self.head.bytes.as_ptr().add(off), dst.as_mut_ptr(), N)
        };
        true
    }
}

/// A TC packet's linear data, checked to hold `N` bytes.
pub struct Linear<const N: usize> {
    data: usize,
}

impl<const N: usize> Linear<N> {
    #[inline(always)]
    pub fn of(ctx: &TcContext) -> Option<Self> {
        let data = ctx.data();
        if data + N > ctx.data_end() {
            return None;
        }
        Some(Linear { data })
    }
}

/// Loads of `$width` at a constant offset from the packet pointer the
/// bounds check above was made on (by the verifier's rules, the very
/// register), whatever the alignment: a plain `read` would assume it, and
/// `read_unaligned` becomes byte loads on eBPF.
macro_rules! load {
    ($width:literal, $p:expr, $off:expr) => {{
        let v: u64;
        // SAFETY: $off + width <= N, which Linear::of checked.
        unsafe {
            core::arch::asm!(concat!("{v} = *(", $width, " *)({p} + {off})"), v = out(reg) v,
                p = in(reg) $p, off = const $off, options(pure, readonly, nostack));
        }
        v
    }};
}

impl<const N: usize> inplace::Window for Linear<N> {
    #[inline(always)]
    fn u8_at<const OFF: usize>(&self) -> u8 {
        const { assert!(OFF < N) };
        load!("u8", self.data, OFF) as u8
    }
    #[inline(always)]
    fn be16_at<const OFF: usize>(&self) -> u16 {
        const { assert!(OFF + 2 <= N) };
        u16::from_be(load!("u16", self.data, OFF) as u16)
    }
    #[inline(always)]
    fn le32_at<const OFF: usize>(&self) -> u32 {
        const { assert!(OFF + 4 <= N) };
        load!("u32", self.data, OFF) as u32
    }
}
