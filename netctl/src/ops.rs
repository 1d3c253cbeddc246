//! Imperative operations on the kernel's objects, by name: what the CLI's
//! verbs (and library users) call. Each checks its inputs first so that a
//! bad request changes nothing.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::mac::Mac;
use crate::names::check_ifname;
use crate::netns::{self, Netns};
use crate::nl::{LinkChange, Nl, RouteSpec, VethSpec};

/// Creates a named namespace with `lo` up.
pub async fn add_netns(name: &str) -> Result<()> {
    Nl::create_netns(name).await.map(drop)
}

pub fn del_netns(name: &str) -> Result<()> {
    netns::delete(name)
}

fn ifname(name: &str) -> Result<()> {
    check_ifname(name).map_err(Error::Invalid)
}

pub struct VethRequest<'a> {
    pub ns: Netns,
    pub name: &'a str,
    pub peer: &'a str,
    pub peer_netns: Option<&'a str>,
    pub bridge: Option<&'a str>,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
}

pub async fn add_veth(r: VethRequest<'_>) -> Result<()> {
    ifname(r.name)?;
    ifname(r.peer)?;
    if let Some(m) = r.mac
        && (m.is_multicast() || m.is_zero())
    {
        return Err(Error::Invalid(format!("mac {m} is not a unicast address")));
    }
    let nl = Nl::open(&r.ns).await?;
    let master = match r.bridge {
        Some(b) => {
            let l = nl.require_link(b).await?;
            if l.kind.as_deref() != Some("bridge") {
                return Err(Error::Invalid(format!("{b} is not a bridge")));
            }
            Some(l.index)
        }
        None => None,
    };
    let peer_file = match r.peer_netns {
        Some(n) => Some(Netns::named(n).open()?),
        None => None,
    };
    nl.add_veth(&VethSpec {
        host_name: r.name,
        master,
        peer_name: r.peer,
        peer_netns: peer_file.as_ref(),
        peer_mac: r.mac,
        mtu: r.mtu,
        alias: None,
        group: 0,
    })
    .await?;
    let peer_ns = match r.peer_netns {
        Some(n) => Netns::named(n),
        None => r.ns.clone(),
    };
    let pnl = Nl::open(&peer_ns).await?;
    let idx = pnl.require_link(r.peer).await?.index;
    pnl.set_up(idx).await
}

pub async fn add_bridge(ns: &Netns, name: &str, ageing_s: Option<u32>) -> Result<()> {
    ifname(name)?;
    Nl::open(ns)
        .await?
        .add_bridge(name, ageing_s.map(|s| s * 100))
        .await
}

async fn bridge_index(nl: &Nl, name: &str) -> Result<u32> {
    let l = nl.require_link(name).await?;
    if l.kind.as_deref() != Some("bridge") {
        return Err(Error::Invalid(format!("{name} is not a bridge")));
    }
    Ok(l.index)
}

pub async fn del_link(ns: &Netns, name: &str) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let l = nl.require_link(name).await?;
    nl.del_link(l.index).await
}

pub async fn attach(ns: &Netns, bridge: &str, port: &str) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let b = bridge_index(&nl, bridge).await?;
    let p = nl.require_link(port).await?;
    nl.change_link(
        p.index,
        LinkChange {
            master: Some(Some(b)),
            ..Default::default()
        },
    )
    .await
}

pub async fn detach(ns: &Netns, port: &str) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let p = nl.require_link(port).await?;
    if p.master.is_none() {
        return Err(Error::Invalid(format!(
            "{port} is not attached to a bridge"
        )));
    }
    nl.change_link(
        p.index,
        LinkChange {
            master: Some(None),
            ..Default::default()
        },
    )
    .await
}

pub async fn set_ageing(ns: &Netns, bridge: &str, seconds: u32) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let b = bridge_index(&nl, bridge).await?;
    nl.set_bridge_ageing(b, seconds * 100).await
}

pub async fn set_hairpin(ns: &Netns, port: &str, on: bool) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let p = nl.require_link(port).await?;
    if p.master.is_none() {
        return Err(Error::Invalid(format!("{port} is not a bridge port")));
    }
    nl.set_hairpin(p.index, on).await
}

pub async fn set_link(ns: &Netns, dev: &str, change: LinkChange) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let l = nl.require_link(dev).await?;
    nl.change_link(l.index, change).await
}

/// Moves `dev` from `ns` into the named namespace `to`.
pub async fn move_link(ns: &Netns, dev: &str, to: &str) -> Result<()> {
    let target = Netns::named(to).open()?;
    let nl = Nl::open(ns).await?;
    let l = nl.require_link(dev).await?;
    nl.move_link(&l, &target, to).await
}

pub async fn add_addr(ns: &Netns, dev: &str, net: IpNet) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let l = nl.require_link(dev).await?;
    nl.add_addr(l.index, net).await
}

pub async fn del_addr(ns: &Netns, dev: &str, net: IpNet) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let l = nl.require_link(dev).await?;
    nl.del_addr(l.index, net).await
}

/// Parses `default` or a prefix for a route destination of the same family
/// as `via` (IPv4 when there is none).
pub fn route_dst(to: &str, via: Option<IpAddr>) -> Result<IpNet> {
    if to == "default" {
        return Ok(if via.is_some_and(|v| v.is_ipv6()) {
            "::/0".parse().unwrap()
        } else {
            "0.0.0.0/0".parse().unwrap()
        });
    }
    if let Ok(n) = to.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = to.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(Error::Invalid(format!(
        "{to:?} is not a prefix or `default`"
    )))
}

pub struct RouteRequest<'a> {
    pub to: &'a str,
    pub via: Option<IpAddr>,
    pub dev: Option<&'a str>,
    pub table: Option<u32>,
    pub metric: Option<u32>,
}

async fn route_spec(nl: &Nl, r: &RouteRequest<'_>) -> Result<RouteSpec> {
    let dst = route_dst(r.to, r.via)?;
    if let Some(v) = r.via
        && v.is_ipv4() != dst.addr().is_ipv4()
    {
        return Err(Error::Invalid(format!(
            "gateway {v} is not of the family of {dst}"
        )));
    }
    if r.table == Some(crate::state::RT_TABLE_LOCAL) {
        return Err(Error::Invalid(
            "the local table is maintained by the kernel".into(),
        ));
    }
    let oif = match r.dev {
        Some(d) => Some(nl.require_link(d).await?.index),
        None => None,
    };
    Ok(RouteSpec {
        dst,
        gateway: r.via,
        oif,
        table: r.table.unwrap_or(crate::state::RT_TABLE_MAIN),
        metric: r.metric,
    })
}

pub async fn add_route(ns: &Netns, r: RouteRequest<'_>) -> Result<()> {
    if r.via.is_none() && r.dev.is_none() {
        return Err(Error::Invalid("a route needs --via, --dev or both".into()));
    }
    let nl = Nl::open(ns).await?;
    let spec = route_spec(&nl, &r).await?;
    nl.add_route(&spec).await
}

pub async fn del_route(ns: &Netns, r: RouteRequest<'_>) -> Result<()> {
    let nl = Nl::open(ns).await?;
    let spec = route_spec(&nl, &r).await?;
    nl.del_route(&spec).await
}
