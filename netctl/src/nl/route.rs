use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

use super::Nl;
use crate::error::{Result, from_rtnl};
use crate::state::{Route, RouteKind};

/// A route to add or delete: destination, then a gateway and/or device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub metric: Option<u32>,
}

impl Nl {
    /// Every route of both families in every table; callers filter by table
    /// (a dump without strict checking ignores the table in the request).
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let msgs = self
                .collect("dump routes", self.h.route().get(msg).execute())
                .await?;
            out.extend(msgs.iter().filter_map(decode_route));
        }
        Ok(out)
    }

    pub async fn add_route(&self, r: &RouteSpec) -> Result<()> {
        let msg = build(r);
        self.h
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("add route {}", describe(r))), e))
    }

    pub async fn del_route(&self, r: &RouteSpec) -> Result<()> {
        let mut msg = build(r);
        // Deletion matches on what is given; scope NOWHERE matches any.
        msg.header.scope = RouteScope::NoWhere;
        self.h
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("delete route {}", describe(r))), e))
    }
}

fn describe(r: &RouteSpec) -> String {
    let mut s = r.dst.to_string();
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if r.table != crate::state::RT_TABLE_MAIN {
        s.push_str(&format!(" table {}", r.table));
    }
    s
}

fn build(r: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match r.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = r.dst.prefix_len();
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if r.table < 256 {
        msg.header.table = r.table as u8;
    } else {
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
    }
    msg.attributes.push(RouteAttribute::Table(r.table));
    if r.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.dst.network(),
            )));
    }
    if let Some(g) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if let Some(o) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(o));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    msg
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn decode_route(m: &RouteMessage) -> Option<Route> {
    let v6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut table = m.header.table as u32;
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut prefsrc = None;
    let mut metric = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::PrefSource(p) => prefsrc = ip_of(p),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    let unspecified: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let dst = IpNet::new(
        dst.unwrap_or(unspecified),
        m.header.destination_prefix_length,
    )
    .ok()?;
    let kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        RouteType::Broadcast => RouteKind::Broadcast,
        RouteType::Anycast => RouteKind::Anycast,
        RouteType::Multicast => RouteKind::Multicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        RouteType::Throw => RouteKind::Throw,
        _ => RouteKind::Other,
    };
    Some(Route {
        table,
        kind,
        dst,
        gateway,
        oif,
        prefsrc,
        protocol: protocol_name(m.header.protocol),
        scope: scope_name(m.header.scope),
        metric,
    })
}

fn protocol_name(p: RouteProtocol) -> String {
    match p {
        RouteProtocol::Kernel => "kernel".into(),
        RouteProtocol::Boot => "boot".into(),
        RouteProtocol::Static => "static".into(),
        RouteProtocol::Ra => "ra".into(),
        RouteProtocol::Dhcp => "dhcp".into(),
        RouteProtocol::Unspec => "unspec".into(),
        other => u8::from(other).to_string(),
    }
}

fn scope_name(s: RouteScope) -> String {
    match s {
        RouteScope::Universe => "global".into(),
        RouteScope::Site => "site".into(),
        RouteScope::Link => "link".into(),
        RouteScope::Host => "host".into(),
        RouteScope::NoWhere => "nowhere".into(),
        other => u8::from(other).to_string(),
    }
}
