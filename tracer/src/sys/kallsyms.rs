//! Naming kernel code addresses (drop locations) as `function+0xoffset`.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    thread::{self, JoinHandle},
};

// Looked up for every drop row of every report: FxHash.
use rustc_hash::FxHashMap as HashMap;

/// The kernel's code symbols, read from /proc/kallsyms once. Reading the
/// file costs the kernel some 40 ms (it formats each of 120,000 lines) and
/// the parse about as much: the drops collector has them read as it starts
/// ([`Symbolizer::load`]), on a thread of their own while the programs
/// load, not in the middle of tracing when the first drop shows up.
#[derive(Default)]
pub struct Symbolizer {
    /// Read on first use; empty if /proc/kallsyms could not be read.
    symbols: Option<Symbols>,
    /// The thread [`Symbolizer::load`] started, until the first use joins it.
    reading: Option<JoinHandle<Symbols>>,
    cache: HashMap<u64, String>,
}

impl Symbolizer {
    /// Starts reading the symbols, if that was not yet done.
    pub fn load(&mut self) {
        if self.symbols.is_none() && self.reading.is_none() {
            self.reading = thread::Builder::new()
                .name("kallsyms".into())
                .spawn(Symbols::kernel)
                .ok();
        }
    }

    pub fn name(&mut self, addr: u64) -> String {
        if let Some(n) = self.cache.get(&addr) {
            return n.clone();
        }
        let name = self.symbols().resolve(addr);
        self.cache.insert(addr, name.clone());
        name
    }

    fn symbols(&mut self) -> &Symbols {
        let reading = self.reading.take();
        self.symbols.get_or_insert_with(|| {
            reading
                .and_then(|r| r.join().ok())
                .unwrap_or_else(Symbols::kernel)
        })
    }
}

/// Code symbols sorted by address, their names in one string: 4 MB for
/// 120,000 symbols, where a map of owned strings takes 10.
#[derive(Default)]
struct Symbols {
    /// (address, where its name starts in `names`, its length)
    found: Vec<(u64, u32, u32)>,
    names: String,
}

impl Symbols {
    /// The running kernel's, or none if /proc/kallsyms cannot be read.
    fn kernel() -> Symbols {
        File::open("/proc/kallsyms")
            .map(|f| Symbols::read(BufReader::new(f)))
            .unwrap_or_default()
    }

    /// Lines of /proc/kallsyms, `address type name[\t[module]]`; only code
    /// (`t`, `T`) is kept: a drop location is an address in code. Read a
    /// line at a time: the whole file is 5 MB.
    fn read(file: impl BufRead) -> Symbols {
        let mut found: Vec<(u64, u32, u32)> = Vec::new();
        let mut names = String::new();
        for line in file.split(b'\n') {
            let Ok(line) = line else {
                break;
            };
            let mut parts = line.splitn(3, |&b| b == b' ');
            let (Some(addr), Some(kind), Some(rest)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if kind != b"t" && kind != b"T" {
                continue;
            }
            let name = rest.split(|&b| b == b'\t').next().unwrap_or(rest);
            let addr = std::str::from_utf8(addr)
                .ok()
                .and_then(|a| u64::from_str_radix(a, 16).ok());
            if let (Some(addr), Ok(name)) = (addr, std::str::from_utf8(name)) {
                found.push((addr, names.len() as u32, name.len() as u32));
                names.push_str(name);
            }
        }
        // Stable: of symbols at one address, the last listed names it, as
        // in a map filled in file order.
        found.sort_by_key(|&(addr, ..)| addr);
        found.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                *earlier = *later;
            }
            same
        });
        found.shrink_to_fit();
        names.shrink_to_fit();
        Symbols { found, names }
    }

    fn resolve(&self, addr: u64) -> String {
        // The last symbol at or below `addr`; address 0 is no symbol.
        let i = self.found.partition_point(|&(start, ..)| start <= addr);
        match i.checked_sub(1).map(|i| self.found[i]) {
            Some((start, from, len)) if start != 0 => {
                let name = &self.names[from as usize..(from + len) as usize];
                format!("{name}+{:#x}", addr - start)
            }
            // Before the first symbol, or addresses hidden by kptr_restrict (all 0).
            _ => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_plus_offset() {
        let syms = Symbols::read(
            &b"ffffffff81200100 T ip_rcv\n\
              ffffffff81000000 T _text\n\
              ffffffff81100000 D some_data\n\
              ffffffff81200000 t nf_hook_slow\n\
              ffffffffc0100000 t nft_do_chain\t[nf_tables]\n\
              ffffffffc0100000 t nft_do_chain_alias\t[nf_tables]\n\
              0000000000000000 T hidden\n"[..],
        );
        assert_eq!(syms.resolve(0xffffffff8120009a), "nf_hook_slow+0x9a");
        assert_eq!(syms.resolve(0xffffffff81200100), "ip_rcv+0x0");
        // Data symbols are not code: the text symbol before names it.
        assert_eq!(syms.resolve(0xffffffff81100008), "_text+0x100008");
        assert_eq!(syms.resolve(0xffffffffc0100010), "nft_do_chain_alias+0x10");
        assert_eq!(syms.resolve(0x1234), "0x1234");
        assert_eq!(
            Symbols::default().resolve(0xffffffff81200100),
            "0xffffffff81200100"
        );
    }

    #[test]
    fn running_kernel_resolves_a_known_function() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let line = kallsyms
            .lines()
            .find(|l| l.ends_with(" kfree_skb_reason") || l.ends_with(" sk_skb_reason_drop"))
            .unwrap();
        let addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
        let mut s = Symbolizer::default();
        let name = s.name(addr + 4);
        assert!(name.ends_with("+0x4"), "{name}");
    }
}
