//! What the kernel has, as plain data: the result of netlink dumps, decoded.
//! The planner compares these with a topology; `show` prints them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::mac::Mac;

pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;
pub const RT_TABLE_DEFAULT: u32 = 253;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The rtnetlink kind ("veth", "bridge", …); `None` for physical and lo.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    /// ifindex of the bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    /// For a veth: the peer's ifindex, in the namespace named by `link_netnsid`
    /// (same namespace when that is `None`).
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
    pub alias: Option<String>,
    /// Bridge ageing time, in centiseconds as the kernel keeps it.
    pub ageing_time_cs: Option<u32>,
    /// Bridge port hairpin mode.
    pub hairpin: Option<bool>,
    /// IFLA_NETNS_IMMUTABLE (kernel 6.12+): the device is netns-local.
    pub netns_immutable: Option<bool>,
    /// IFLA_GROUP: netctl puts a topology's host-side devices in a group of
    /// their own so that destroy removes them in one batch.
    pub group: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub net: IpNet,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Other,
}

impl RouteKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteKind::Unicast => "unicast",
            RouteKind::Local => "local",
            RouteKind::Broadcast => "broadcast",
            RouteKind::Anycast => "anycast",
            RouteKind::Multicast => "multicast",
            RouteKind::Blackhole => "blackhole",
            RouteKind::Unreachable => "unreachable",
            RouteKind::Prohibit => "prohibit",
            RouteKind::Throw => "throw",
            RouteKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub kind: RouteKind,
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    /// `proto` as `ip route` prints it ("kernel", "static", "boot", …).
    pub protocol: String,
    /// `scope` as `ip route` prints it ("link", "host", "global").
    pub scope: String,
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: Mac,
    /// The port the address was learned on (or belongs to).
    pub port: u32,
    pub master: Option<u32>,
    pub vlan: Option<u16>,
    /// The bridge's own addresses ("permanent" in `bridge fdb`).
    pub permanent: bool,
    /// Seconds since the entry was last updated (learned entries only).
    pub age_s: Option<u32>,
}

#[cfg(test)]
impl Link {
    /// A plain up link as a dump returns it, for planner and datapath tests.
    pub(crate) fn fixture(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(str::to_string),
            mac: None,
            mtu: 1500,
            up: true,
            loopback: index == 1 && kind.is_none(),
            master: None,
            link: None,
            link_netnsid: None,
            alias: None,
            ageing_time_cs: None,
            hairpin: None,
            netns_immutable: None,
            group: 0,
        }
    }
}

#[cfg(test)]
impl Route {
    /// A static route, for lookup, planner and datapath tests.
    pub(crate) fn fixture(
        table: u32,
        kind: RouteKind,
        dst: &str,
        gateway: Option<&str>,
        oif: u32,
    ) -> Route {
        Route {
            table,
            kind,
            dst: dst.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            prefsrc: None,
            protocol: "static".into(),
            scope: "global".into(),
            metric: None,
        }
    }
}
