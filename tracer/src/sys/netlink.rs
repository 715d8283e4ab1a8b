//! Netlink: the route socket (devices, addresses, qdiscs, namespace ids)
//! and the raw message and attribute walking that nfnetlink users share.

use anyhow::{Context as _, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

/// A netlink route socket of the calling thread's namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self> {
        Ok(Netlink {
            socket: socket(NETLINK_ROUTE)?,
            seq: 0,
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.seq += 1;
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).context("netlink send")?;
        Ok(())
    }

    /// Sends a dump request and collects every message of the answer.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.send(msg, NLM_F_DUMP | NLM_F_REQUEST)?;
        let mut out = Vec::new();
        self.recv(what, |m| {
            out.push(m);
            false
        })?;
        Ok(out)
    }

    /// Sends a request that has no answer but an acknowledgement.
    pub fn ack(&mut self, msg: RouteNetlinkMessage, what: &str) -> Result<()> {
        self.send(msg, NLM_F_REQUEST | NLM_F_ACK)?;
        self.recv(what, |_| false)
    }

    /// Sends a request and returns its one answer.
    pub fn request(&mut self, msg: RouteNetlinkMessage, what: &str) -> Result<RouteNetlinkMessage> {
        self.send(msg, NLM_F_REQUEST)?;
        let mut out = None;
        self.recv(what, |m| {
            out = Some(m);
            true
        })?;
        out.with_context(|| format!("netlink {what}: no answer"))
    }

    /// Receives messages of the current sequence until NLMSG_DONE, or until
    /// `each` returns true.
    fn recv(
        &mut self,
        what: &str,
        mut each: impl FnMut(RouteNetlinkMessage) -> bool,
    ) -> Result<()> {
        let mut rx = vec![0u8; 1 << 16];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rx[..], 0)
                .context("netlink recv")?;
            let mut off = 0;
            while off < n {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[off..n]).context("netlink parse")?;
                let len = msg.header.length as usize;
                let stop = msg.header.sequence_number == self.seq
                    && match msg.payload {
                        NetlinkPayload::Done(_) => true,
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(
                                anyhow::Error::new(e.to_io()).context(format!("netlink {what}"))
                            );
                        }
                        // An acknowledgement: the request is done.
                        NetlinkPayload::Error(_) => true,
                        NetlinkPayload::InnerMessage(m) => each(m),
                        _ => false,
                    };
                if stop {
                    return Ok(());
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

/// Opens a netlink socket of `protocol` in the calling thread's namespace,
/// bound and connected to the kernel.
pub fn socket(protocol: isize) -> Result<Socket> {
    let mut socket = Socket::new(protocol).context("netlink socket")?;
    socket.bind_auto().context("netlink bind")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("netlink connect")?;
    Ok(socket)
}

/// A netfilter netlink socket. It belongs to the namespace it was opened in,
/// whichever thread uses it later, so a namespace can be asked again without
/// entering it. Each request has its own sequence number, and replies with
/// another (the rest of an abandoned one) are skipped.
pub struct Nfnl {
    socket: Socket,
    seq: u32,
    /// Replies land here: kept, as NAT ties may ask hundreds of times a report.
    buf: Vec<u8>,
}

impl Nfnl {
    /// A socket of the calling thread's namespace.
    pub fn open() -> Result<Self> {
        Ok(Nfnl {
            socket: socket(netlink_sys::protocols::NETLINK_NETFILTER)?,
            seq: 0,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Sends request `get` (`subsystem << 8 | message`) for every family's
    /// objects and hands `each` every reply message of type `reply` (header
    /// included) until the dump ends. `what` names the dump in errors.
    pub fn dump(
        &mut self,
        get: u16,
        reply: u16,
        what: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<()> {
        // Family AF_UNSPEC: every family.
        match self.exchange(get, NLM_F_REQUEST | NLM_F_DUMP, 0, &[], reply, &mut each)? {
            Dump::Error(code) => Err(refused(what, code)),
            _ => Ok(()),
        }
    }

    /// Asks for the one object `attrs` name in `family`, handing `each` the
    /// reply messages of type `reply`. False if the kernel has none (ENOENT).
    pub fn get(
        &mut self,
        get: u16,
        family: u8,
        attrs: &[Vec<u8>],
        reply: u16,
        what: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<bool> {
        match self.exchange(
            get,
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            attrs,
            reply,
            &mut each,
        )? {
            Dump::Error(code) if code == -libc::ENOENT => Ok(false),
            Dump::Error(code) => Err(refused(what, code)),
            _ => Ok(true),
        }
    }

    fn exchange(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        attrs: &[Vec<u8>],
        reply: u16,
        each: &mut impl FnMut(&[u8]),
    ) -> Result<Dump> {
        self.seq = self.seq.wrapping_add(1);
        let req = build::nfnl_request(kind, flags, self.seq, family, attrs);
        self.socket.send(&req, 0).context("netlink send")?;
        let buf = &mut self.buf;
        loop {
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("netlink recv"),
            };
            match decode(&buf[..n], Some(self.seq), reply, each) {
                Dump::More => {}
                end => return Ok(end),
            }
        }
    }
}

/// The kernel's answer `code` (a negative errno) to the request `what` names.
fn refused(what: &str, code: i32) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::from_raw_os_error(-code))
}

/// Where a dump is after one buffer of it.
#[derive(Debug, PartialEq, Eq)]
pub enum Dump {
    More,
    Done,
    /// The kernel's negative errno.
    Error(i32),
}

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// Hands `each` the messages of type `reply` in `buf` (at least a
/// netfilter header long), and says whether the dump ended.
pub fn decode_dump(buf: &[u8], reply: u16, each: &mut impl FnMut(&[u8])) -> Dump {
    decode(buf, None, reply, each)
}

/// [`decode_dump`] of the replies to request `seq` only, if given. An
/// acknowledgement (an error message of code 0) ends a request too.
fn decode(buf: &[u8], seq: Option<u32>, reply: u16, each: &mut impl FnMut(&[u8])) -> Dump {
    for (kind, msg) in messages(buf) {
        if seq.is_some_and(|s| msg.get(8..).and_then(ne32) != Some(s)) {
            continue;
        }
        match kind {
            NLMSG_DONE => return Dump::Done,
            NLMSG_ERROR => {
                let code = msg.get(16..).and_then(ne32).unwrap_or(0) as i32;
                return if code != 0 {
                    Dump::Error(code)
                } else {
                    Dump::Done
                };
            }
            k if k == reply && msg.len() >= 20 => each(msg),
            _ => {}
        }
    }
    Dump::More
}

/// Length of the netlink message header.
pub const NLMSG_HDRLEN: usize = 16;

/// The netlink messages in `buf`, as (type, whole message with its header).
/// Stops at the first malformed one.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let len = ne32(buf.get(off..)?)? as usize;
        let ty = ne16(buf.get(off + 4..)?)?;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return None;
        }
        let msg = &buf[off..off + len];
        off += align4(len);
        Some((ty, msg))
    })
}

/// Netlink attributes of `buf`: (type without the NESTED and BYTEORDER flags, payload).
pub fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = ne16(buf)? as usize;
        let ty = ne16(buf.get(2..)?)? & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn ne16(b: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?))
}

pub fn ne32(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

pub fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

pub fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// A NUL-terminated string attribute.
pub fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Builders of netlink messages: requests, and replies for the decoders' tests.
pub mod build {
    use super::align4;

    /// `NLA_F_NESTED`: the attribute holds attributes.
    const NLA_F_NESTED: u16 = 0x8000;

    /// One attribute, padded.
    pub fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(((4 + payload.len()) as u16).to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    /// An attribute holding `parts`.
    pub fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | NLA_F_NESTED, &parts.concat())
    }

    /// An nfnetlink message of `kind` with `flags` and sequence number `seq`:
    /// nlmsghdr, nfgenmsg of `family` (version 0, resource 0), `attrs`.
    pub fn nfnl_request(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut m = Vec::with_capacity(20 + body.len());
        m.extend(((20 + body.len()) as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(flags.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend([family, 0, 0, 0]);
        m.extend(body);
        m
    }

    /// A message as the kernel sends one of a dump (`NLM_F_MULTI`, sequence 1).
    #[cfg(test)]
    pub fn nfnl_message(kind: u16, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        nfnl_request(kind, 2, 1, family, attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::{build::attr, *};

    #[test]
    fn attributes_are_walked_with_padding_and_flags_masked() {
        let buf = [attr(1, b"abc\0"), attr(2 | 0x8000, &7u32.to_be_bytes())].concat();
        let got: Vec<(u16, Vec<u8>)> = attributes(&buf).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(
            got,
            [(1, b"abc\0".to_vec()), (2, 7u32.to_be_bytes().to_vec())]
        );
        assert_eq!(string(&got[0].1), "abc");
        assert_eq!(be32(&got[1].1), Some(7));
        // A length past the end stops the walk.
        assert_eq!(attributes(&buf[..6]).count(), 0);
    }

    #[test]
    fn messages_stop_at_a_truncated_one() {
        let mut m = Vec::new();
        m.extend(20u32.to_ne_bytes());
        m.extend(3u16.to_ne_bytes());
        m.extend([0u8; 14]);
        let two = [m.clone(), m.clone()].concat();
        assert_eq!(messages(&two).count(), 2);
        assert_eq!(messages(&two[..30]).count(), 1);
    }
}
