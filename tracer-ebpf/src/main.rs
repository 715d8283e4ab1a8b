//! tracer's eBPF programs. Each module owns one kind of data collected; the
//! types they share with userspace live in the library half of this crate.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly keeps bounds checks the verifier needs out of the optimiser's reach.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Map keys are passed by reference on purpose: by value, aya copies them
// onto the 512-byte eBPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod cache;
#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod frags;
#[cfg(target_arch = "bpf")]
mod head;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod netfilter;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Built for the host only so that `cargo build --workspace` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
