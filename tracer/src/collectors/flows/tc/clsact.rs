//! clsact qdiscs and the filters on them, over rtnetlink in the calling
//! thread's namespace: what attaching without tcx leaves on a device.

use anyhow::Result;
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};

use crate::sys::netlink::Netlink;

/// Which clsact hook a filter is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    pub fn from_name(s: &str) -> Option<Hook> {
        match s {
            "ingress" => Some(Hook::Ingress),
            "egress" => Some(Hook::Egress),
            _ => None,
        }
    }
}

/// A filter on a clsact hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The BPF program it runs, if it is a `bpf` filter.
    pub prog_id: Option<u32>,
}

/// `ETH_P_ALL` in network order, as the filters tracer (and aya) add match it.
const PROTOCOL_ALL: u16 = 0x0003u16.to_be();

/// The filters on `hook` of device `ifindex`; none if it has no clsact qdisc.
pub fn filters(ifindex: u32, hook: Hook) -> Result<Vec<Filter>> {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.parent = hook.parent();
    let answers = match Netlink::open()?
        .dump(RouteNetlinkMessage::GetTrafficFilter(msg), "filter dump")
    {
        Ok(a) => a,
        // No clsact qdisc: nothing there.
        Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
            _ => None,
        })
        // A filter's chain head (handle 0) carries no program: skip it.
        .filter(|f| u32::from(f.header.handle) != 0)
        .map(|f| Filter {
            priority: (f.header.info >> 16) as u16,
            handle: f.header.handle.into(),
            prog_id: f.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                    _ => None,
                }),
                _ => None,
            }),
        })
        .collect())
}

/// Deletes one filter of `hook` of device `ifindex`.
pub fn delete_filter(ifindex: u32, hook: Hook, priority: u16, handle: u32) -> Result<()> {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.parent = hook.parent();
    msg.header.handle = handle.into();
    msg.header.info = (u32::from(priority) << 16) | u32::from(PROTOCOL_ALL);
    Netlink::open()?.ack(RouteNetlinkMessage::DelTrafficFilter(msg), "delete filter")
}

/// Deletes the clsact qdisc of device `ifindex` (`tc qdisc del dev X clsact`),
/// with every filter on it.
pub fn delete_qdisc(ifindex: u32) -> Result<()> {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    Netlink::open()?.ack(
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        "delete clsact",
    )
}

/// Deletes the clsact qdisc of device `ifindex` if no filter is left on it:
/// one that others use stays.
pub fn delete_qdisc_if_unused(ifindex: u32) -> Result<bool> {
    for hook in Hook::BOTH {
        if !filters(ifindex, hook)?.is_empty() {
            return Ok(false);
        }
    }
    match delete_qdisc(ifindex) {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_errno(e: &anyhow::Error, errno: i32) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(errno))
    })
}

/// Whether device `ifindex` is still the one called `name` (a device that
/// went away took its qdisc and filters; its ifindex may be reused).
pub fn same_device(ifindex: u32, name: &str) -> Result<bool> {
    Ok(crate::topology::devices::list()?
        .iter()
        .any(|d| d.ifindex == ifindex && d.name == name))
}
