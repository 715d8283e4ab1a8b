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

/// Dumps a netfilter subsystem's objects of every family: sends request
/// `get` (`subsystem << 8 | message`) and hands `each` every reply message
/// of type `reply` (header included) until the dump ends. `what` names the
/// dump in errors.
pub fn netfilter_dump(get: u16, reply: u16, what: &str, mut each: impl FnMut(&[u8])) -> Result<()> {
    let socket = socket(netlink_sys::protocols::NETLINK_NETFILTER)?;
    // nlmsghdr + nfgenmsg (family AF_UNSPEC: every family, version 0, res_id 0).
    let mut req = Vec::with_capacity(20);
    req.extend(20u32.to_ne_bytes());
    req.extend(get.to_ne_bytes());
    req.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend(1u32.to_ne_bytes());
    req.extend(0u32.to_ne_bytes());
    req.extend([0u8, 0, 0, 0]);
    socket.send(&req, 0).context("netlink send")?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("netlink recv"),
        };
        match decode_dump(&buf[..n], reply, &mut each) {
            Dump::More => {}
            Dump::Done => return Ok(()),
            Dump::Error(code) => {
                anyhow::bail!("{what}: {}", std::io::Error::from_raw_os_error(-code))
            }
        }
    }
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
    for (kind, msg) in messages(buf) {
        match kind {
            NLMSG_DONE => return Dump::Done,
            NLMSG_ERROR => {
                let code = msg.get(16..).and_then(ne32).unwrap_or(0) as i32;
                if code != 0 {
                    return Dump::Error(code);
                }
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

/// Builders of netlink messages, for tests of the decoders.
#[cfg(test)]
pub mod build {
    use super::align4;

    /// One attribute, padded.
    pub fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(((4 + payload.len()) as u16).to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    /// An nfnetlink message of `kind`: nlmsghdr, nfgenmsg of `family`, `attrs`.
    pub fn nfnl_message(kind: u16, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut m = Vec::new();
        m.extend(((20 + body.len()) as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(2u16.to_ne_bytes());
        m.extend(1u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend([family, 0, 0, 0]);
        m.extend(body);
        m
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
