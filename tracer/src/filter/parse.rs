//! The filter language's tokenizer and recursive-descent parser. Every
//! error names the column of the token it is about.

use std::net::IpAddr;

use super::{Atom, Expr, FAMILIES, Scope, Side, reason_name};

/// A filter that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// 1-based column of the offending token (one past the end when the
    /// expression stopped short).
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for FilterError {}

#[derive(Debug, Clone, PartialEq)]
struct Token<'a> {
    text: &'a str,
    column: usize,
}

fn tokens(s: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        let column = s[..i].chars().count() + 1;
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let two = s.get(i..i + 2);
        let len = if matches!(two, Some("&&") | Some("||")) {
            2
        } else if matches!(c, '(' | ')' | '!') {
            1
        } else {
            s[i..]
                .find(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '!' | '&' | '|'))
                .unwrap_or(s.len() - i)
                .max(1)
        };
        out.push(Token {
            text: &s[i..i + len],
            column,
        });
        while chars.peek().is_some_and(|&(j, _)| j < i + len) {
            chars.next();
        }
    }
    out
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    /// Column just past the end, for "expected more".
    end: usize,
}

type Result<T> = std::result::Result<T, FilterError>;

fn err<T>(column: usize, message: impl Into<String>) -> Result<T> {
    Err(FilterError {
        column,
        message: message.into(),
    })
}

const PROTOS: [(&str, u8); 6] = [
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("icmp6", 58),
    ("icmpv6", 58),
    ("sctp", 132),
];

fn header_word(w: &str) -> bool {
    matches!(
        w,
        "src" | "dst" | "host" | "net" | "port" | "portrange" | "proto"
    ) || PROTOS.iter().any(|(n, _)| *n == w)
        || FAMILIES.iter().any(|(n, _)| *n == w)
}

pub fn parse(s: &str) -> Result<Expr> {
    let mut p = Parser {
        tokens: tokens(s),
        pos: 0,
        end: s.chars().count() + 1,
    };
    if p.tokens.is_empty() {
        return err(1, "empty filter");
    }
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some(t) if t.text == ")" => err(t.column, "')' without a '(' before it"),
        Some(t) => err(t.column, format!("unexpected '{}'", t.text)),
    }
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.pos)
    }

    fn peek_is(&self, words: &[&str]) -> bool {
        self.peek().is_some_and(|t| words.contains(&t.text))
    }

    fn next(&mut self, what: &str) -> Result<Token<'a>> {
        match self.tokens.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.clone())
            }
            None => err(self.end, format!("expected {what} at the end")),
        }
    }

    fn or(&mut self) -> Result<Expr> {
        let mut e = self.and()?;
        while self.peek_is(&["or", "||"]) {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut e = self.unary()?;
        loop {
            if self.peek_is(&["and", "&&"]) {
                self.pos += 1;
            } else if self.peek().is_none() || self.peek_is(&["or", "||", ")"]) {
                return Ok(e);
            }
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr> {
        let t = self.next("an expression")?;
        match t.text {
            "not" | "!" => Ok(Expr::Not(Box::new(self.unary()?))),
            "(" => {
                let e = self.or()?;
                match self.peek() {
                    Some(c) if c.text == ")" => {
                        self.pos += 1;
                        Ok(e)
                    }
                    Some(c) => err(c.column, format!("expected ')', found '{}'", c.text)),
                    None => err(
                        self.end,
                        format!("'(' at column {} is never closed", t.column),
                    ),
                }
            }
            "vni" => {
                let v = self.next("a VNI after 'vni'")?;
                match v.text.parse::<u32>() {
                    Ok(n) if n < 1 << 24 => Ok(Expr::Vni(n)),
                    _ => err(v.column, format!("'{}' is not a VNI (0-16777215)", v.text)),
                }
            }
            "netns" => Ok(Expr::Netns(self.name("a namespace after 'netns'")?)),
            "iface" => Ok(Expr::Iface(self.name("a device after 'iface'")?)),
            "reason" => Ok(Expr::Reason(reason_name(
                &self.name("a drop reason after 'reason'")?,
            ))),
            "inner" | "outer" => {
                let scope = if t.text == "inner" {
                    Scope::Inner
                } else {
                    Scope::Outer
                };
                match self.peek() {
                    Some(n) if header_word(n.text) => self.header(scope),
                    Some(n) => err(
                        n.column,
                        format!(
                            "'{}' after '{}': expected host, net, port, portrange, src, dst or a protocol",
                            n.text, t.text
                        ),
                    ),
                    None => err(
                        self.end,
                        format!("expected a header test after '{}'", t.text),
                    ),
                }
            }
            w if header_word(w) => {
                self.pos -= 1;
                self.header(Scope::Either)
            }
            ")" => err(t.column, "')' without a '(' before it"),
            "and" | "&&" | "or" | "||" => err(
                t.column,
                format!("'{}' needs an expression before it", t.text),
            ),
            w => err(
                t.column,
                format!(
                    "unknown word '{w}' (expected host, net, port, portrange, src, dst, tcp, udp, icmp, icmp6, proto, ip, ip6, inner, outer, vni, netns, iface, reason, not, and, or)"
                ),
            ),
        }
    }

    fn name(&mut self, what: &str) -> Result<String> {
        let t = self.next(what)?;
        if matches!(t.text, "(" | ")" | "!" | "&&" | "||") {
            return err(t.column, format!("expected {what}, found '{}'", t.text));
        }
        Ok(t.text.to_string())
    }

    /// Header atoms, one after the other, that hold on one header.
    fn header(&mut self, scope: Scope) -> Result<Expr> {
        let mut atoms = Vec::new();
        while self.peek().is_some_and(|t| header_word(t.text)) {
            atoms.push(self.atom()?);
        }
        Ok(Expr::Header(scope, atoms))
    }

    fn atom(&mut self) -> Result<Atom> {
        let t = self.next("a header test")?;
        let side = match t.text {
            "src" => Side::Src,
            "dst" => Side::Dst,
            _ => Side::Either,
        };
        let t = if side == Side::Either {
            t
        } else {
            let n = self.next(&format!("host, net, port or portrange after '{}'", t.text))?;
            if !matches!(n.text, "host" | "net" | "port" | "portrange") {
                return err(
                    n.column,
                    format!(
                        "expected host, net, port or portrange after '{}', found '{}'",
                        t.text, n.text
                    ),
                );
            }
            n
        };
        match t.text {
            "host" => {
                let a = self.next("an address after 'host'")?;
                a.text.parse().map(|ip| Atom::Host(side, ip)).or_else(|_| {
                    err(
                        a.column,
                        format!("'{}' is not an IPv4 or IPv6 address", a.text),
                    )
                })
            }
            "net" => {
                let a = self.next("a network after 'net' (e.g. 10.0.0.0/8)")?;
                let (addr, len) = a.text.split_once('/').unwrap_or((a.text, ""));
                let ip: IpAddr = addr.parse().or_else(|_| {
                    err(a.column, format!("'{addr}' is not an IPv4 or IPv6 address"))
                })?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = if len.is_empty() {
                    max
                } else {
                    match len.parse::<u8>() {
                        Ok(l) if l <= max => l,
                        _ => {
                            return err(
                                a.column + addr.chars().count() + 1,
                                format!("'{len}' is not a prefix length (0-{max})"),
                            );
                        }
                    }
                };
                Ok(Atom::Net(side, ip, len))
            }
            "port" => {
                let p = self.next("a port after 'port'")?;
                let n = port(&p)?;
                Ok(Atom::Port(side, n, n))
            }
            "portrange" => {
                let p = self.next("a range after 'portrange' (e.g. 1000-2000)")?;
                let Some((lo, hi)) = p.text.split_once('-') else {
                    return err(
                        p.column,
                        format!("'{}' is not a range like 1000-2000", p.text),
                    );
                };
                let lo_t = Token {
                    text: lo,
                    column: p.column,
                };
                let hi_t = Token {
                    text: hi,
                    column: p.column + lo.chars().count() + 1,
                };
                let (lo, hi) = (port(&lo_t)?, port(&hi_t)?);
                if lo > hi {
                    return err(p.column, format!("'{}': the range is empty", p.text));
                }
                Ok(Atom::Port(side, lo, hi))
            }
            "proto" => {
                let p = self.next("a protocol after 'proto'")?;
                match PROTOS.iter().find(|(n, _)| *n == p.text) {
                    Some((_, n)) => Ok(Atom::Proto(*n)),
                    None => p.text.parse().map(Atom::Proto).or_else(|_| {
                        err(
                            p.column,
                            format!("'{}' is not a protocol name or number (0-255)", p.text),
                        )
                    }),
                }
            }
            w => match (
                PROTOS.iter().find(|(n, _)| *n == w),
                FAMILIES.iter().find(|(n, _)| *n == w),
            ) {
                (Some((_, n)), _) => Ok(Atom::Proto(*n)),
                (_, Some((_, f))) => Ok(Atom::Family(*f)),
                _ => err(t.column, format!("unexpected '{w}'")),
            },
        }
    }
}

fn port(t: &Token) -> Result<u16> {
    t.text
        .parse()
        .or_else(|_| err(t.column, format!("'{}' is not a port (0-65535)", t.text)))
}
