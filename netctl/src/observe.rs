//! Kernel → model: one namespace's links, addresses, routes and forwarding
//! switch, read over netlink.

use ipnet::IpNet;
use serde::Serialize;

use crate::error::Result;
use crate::nl::Nl;
use crate::state::{Addr, Link, Route};
use crate::sysctl;

#[derive(Debug, Clone, Serialize)]
pub struct NsView {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub ip_forward: bool,
}

impl NsView {
    pub async fn read(nl: &Nl) -> Result<NsView> {
        // One dump at a time: the kernel answers EBUSY to a second dump on
        // a socket that has one in progress.
        let links = nl.links().await?;
        let addrs = nl.addrs().await?;
        let routes = nl.routes().await?;
        let ip_forward = sysctl::ip_forward(&nl.ns)?;
        Ok(NsView {
            links,
            addrs,
            routes,
            ip_forward,
        })
    }

    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// Addresses on `dev`, without IPv6 link-local ones (the kernel makes
    /// those by itself).
    pub fn addrs_of(&self, dev: &str) -> Vec<IpNet> {
        let Some(l) = self.link(dev) else {
            return Vec::new();
        };
        self.addrs
            .iter()
            .filter(|a| a.index == l.index && !is_link_local(&a.net))
            .map(|a| a.net)
            .collect()
    }

    pub fn routes_in(&self, table: u32) -> impl Iterator<Item = &Route> {
        self.routes.iter().filter(move |r| r.table == table)
    }
}

pub fn is_link_local(n: &IpNet) -> bool {
    match n {
        IpNet::V6(v6) => (v6.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(_) => false,
    }
}
