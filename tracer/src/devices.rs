//! Network devices of a namespace, read over rtnetlink.

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// What kind of device it is, as far as tracer cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Veth,
    Bridge,
    Vxlan(Vxlan),
    /// Any other kind, by its rtnetlink name ("" for physical devices).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vxlan {
    pub vni: Option<u32>,
    /// UDP destination port (the kernel's default is 8472 when none is given).
    pub port: u16,
    /// The underlay device, if the VXLAN device was bound to one.
    pub link: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub ifindex: u32,
    pub name: String,
    pub kind: Kind,
    pub mtu: u32,
    /// Frames start with an Ethernet header (what the TC parser expects).
    pub ethernet: bool,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
}

impl Device {
    /// The devices tracer traces when no `--iface` is given.
    pub fn traced_by_default(&self) -> bool {
        matches!(self.kind, Kind::Veth | Kind::Bridge | Kind::Vxlan(_))
    }

    pub fn kind_name(&self) -> &str {
        match &self.kind {
            Kind::Veth => "veth",
            Kind::Bridge => "bridge",
            Kind::Vxlan(_) => "vxlan",
            Kind::Other(k) if k.is_empty() => "device",
            Kind::Other(k) => k,
        }
    }
}

/// Lists the devices of the calling thread's network namespace.
pub fn list() -> Result<Vec<Device>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    socket.bind_auto().context("netlink bind")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("netlink connect")?;

    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).context("netlink send")?;

    let mut devices = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0).context("netlink recv")?;
        let mut off = 0;
        while off < n {
            let msg: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[off..n]).context("netlink parse")?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(devices),
                NetlinkPayload::Error(e) => bail!("netlink link dump: {e:?}"),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    devices.push(from_message(&link));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn from_message(link: &LinkMessage) -> Device {
    let mut dev = Device {
        ifindex: link.header.index,
        name: String::new(),
        kind: Kind::Other(String::new()),
        mtu: 0,
        ethernet: link.header.link_layer_type == LinkLayerType::Ether,
        master: None,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => dev.name = n.clone(),
            LinkAttribute::Mtu(m) => dev.mtu = *m,
            LinkAttribute::Controller(m) => dev.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => dev.kind = kind(infos),
            _ => {}
        }
    }
    dev
}

fn kind(infos: &[LinkInfo]) -> Kind {
    let mut kind = Kind::Other(String::new());
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Veth) => kind = Kind::Veth,
            LinkInfo::Kind(InfoKind::Bridge) => kind = Kind::Bridge,
            // The data attribute, when it came first, already made it a Vxlan.
            LinkInfo::Kind(InfoKind::Vxlan) if !matches!(kind, Kind::Vxlan(_)) => {
                kind = Kind::Vxlan(Vxlan {
                    port: 8472,
                    ..Vxlan::default()
                });
            }
            LinkInfo::Kind(InfoKind::Vxlan) => {}
            LinkInfo::Kind(other) => kind = Kind::Other(other.to_string()),
            LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                let mut v = Vxlan {
                    port: 8472,
                    ..Vxlan::default()
                };
                for a in attrs {
                    match a {
                        InfoVxlan::Id(id) => v.vni = Some(*id),
                        InfoVxlan::Port(p) => v.port = *p,
                        InfoVxlan::Link(l) => v.link = Some(*l),
                        _ => {}
                    }
                }
                kind = Kind::Vxlan(v);
            }
            _ => {}
        }
    }
    kind
}
