//! Naming kernel code addresses (drop locations) as `function+0xoffset`.

use std::collections::BTreeMap;

// Looked up for every drop row of every report: FxHash.
use rustc_hash::FxHashMap as HashMap;

/// The kernel's symbols (aya reads /proc/kallsyms), loaded on first use.
#[derive(Default)]
pub struct Symbolizer {
    /// Empty if /proc/kallsyms could not be read.
    symbols: Option<BTreeMap<u64, String>>,
    cache: HashMap<u64, String>,
}

impl Symbolizer {
    pub fn name(&mut self, addr: u64) -> String {
        if let Some(n) = self.cache.get(&addr) {
            return n.clone();
        }
        let symbols = self
            .symbols
            .get_or_insert_with(|| aya::util::kernel_symbols().unwrap_or_default());
        let name = resolve(symbols, addr);
        self.cache.insert(addr, name.clone());
        name
    }
}

fn resolve(symbols: &BTreeMap<u64, String>, addr: u64) -> String {
    match symbols.range(1..=addr).next_back() {
        Some((start, name)) => format!("{name}+{:#x}", addr - start),
        // Before the first symbol, or addresses hidden by kptr_restrict (all 0).
        None => format!("{addr:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_plus_offset() {
        let syms = BTreeMap::from([
            (0xffffffff81000000, "_text".to_string()),
            (0xffffffff81200000, "nf_hook_slow".to_string()),
            (0xffffffff81200100, "ip_rcv".to_string()),
            (0, "hidden".to_string()),
        ]);
        assert_eq!(resolve(&syms, 0xffffffff8120009a), "nf_hook_slow+0x9a");
        assert_eq!(resolve(&syms, 0xffffffff81200100), "ip_rcv+0x0");
        assert_eq!(resolve(&syms, 0x1234), "0x1234");
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
