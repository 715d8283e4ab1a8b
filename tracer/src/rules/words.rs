//! Splitting a rule's text into words, as iptables-save and nft print rules.

/// What a rule's text looks like.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    /// `\"` inside double quotes stands for a quote (iptables-save's comments).
    pub escapes: bool,
    /// Words inside braces (nft's anonymous sets and verdict maps) are skipped.
    pub skip_braces: bool,
}

pub const IPTABLES: Syntax = Syntax {
    escapes: true,
    skip_braces: false,
};

pub const NFT: Syntax = Syntax {
    escapes: false,
    skip_braces: true,
};

/// The words of `s`; a double-quoted string is one word, without its quotes.
pub fn words(s: &str, syntax: Syntax) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut depth = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && syntax.escapes => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            _ if quoted => cur.push(c),
            '{' if syntax.skip_braces => depth += 1,
            '}' if syntax.skip_braces => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}
