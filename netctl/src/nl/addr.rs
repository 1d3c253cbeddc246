use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};

use super::Nl;
use crate::error::{Result, from_rtnl};
use crate::state::Addr;

impl Nl {
    pub async fn addrs(&self) -> Result<Vec<Addr>> {
        let msgs = self
            .collect("dump addresses", self.h.address().get().execute())
            .await?;
        Ok(msgs.iter().filter_map(decode_addr).collect())
    }

    /// Adds an address. IPv6 addresses skip duplicate address detection:
    /// netctl owns the segment and a tentative address would not answer for
    /// a second or more.
    pub async fn add_addr(&self, index: u32, net: IpNet) -> Result<()> {
        let mut req = self.h.address().add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("add address {net}")), e))
    }

    pub async fn del_addr(&self, index: u32, net: IpNet) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = match net.addr() {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(net.addr()));
        msg.attributes.push(AddressAttribute::Address(net.addr()));
        self.h
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("delete address {net}")), e))
    }
}

fn decode_addr(m: &AddressMessage) -> Option<Addr> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equal to it elsewhere.
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let net = IpNet::new(ip, m.header.prefix_len).ok()?;
    Some(Addr {
        index: m.header.index,
        net,
    })
}
