use std::os::fd::AsRawFd;

use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec};

use super::Nl;
use crate::error::{Error, Result, from_rtnl};
use crate::mac::Mac;
use crate::state::Link;

/// A veth pair made in one request: the host end here (optionally on a
/// bridge), the peer directly in its namespace under its final name.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub master: Option<u32>,
    pub peer_name: &'a str,
    pub peer_netns: Option<&'a std::fs::File>,
    pub peer_mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub alias: Option<&'a str>,
    /// IFLA_GROUP of the host end (0 = default group).
    pub group: u32,
}

/// Attribute changes on an existing link.
#[derive(Default)]
pub struct LinkChange {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// `Some(Some(i))` enslaves to `i`, `Some(None)` releases.
    pub master: Option<Option<u32>>,
    pub alias: Option<String>,
}

impl Nl {
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs = self
            .collect("dump links", self.h.link().get().execute())
            .await?;
        Ok(msgs.iter().map(decode_link).collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = futures::TryStreamExt::try_collect(
            self.h.link().get().match_name(name.to_string()).execute(),
        )
        .await;
        match res {
            Ok(v) => Ok(v.first().map(decode_link)),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(from_rtnl(self.ctx(format!("get link {name}")), e)),
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::NoSuchLink {
                name: name.to_string(),
                netns: self.ns.to_string(),
            })
    }

    pub async fn add_bridge(&self, name: &str, ageing_time_cs: Option<u32>) -> Result<()> {
        let mut b = LinkBridge::new(name);
        if let Some(a) = ageing_time_cs {
            b = b.ageing_time(a);
        }
        self.h
            .link()
            .add(b.up().build())
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("create bridge {name}")), e))
    }

    pub async fn set_bridge_ageing(&self, index: u32, ageing_time_cs: u32) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
            .index(index)
            .set_info_data(InfoData::Bridge(vec![InfoBridge::AgeingTime(
                ageing_time_cs,
            )]))
            .build();
        self.h
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("set ageing time on ifindex {index}")), e))
    }

    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )]))
            .build();
        self.h
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("set hairpin on ifindex {index}")), e))
    }

    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        // The peer cannot be created up: veth_open() refuses with ENOTCONN
        // until both ends exist. Callers bring it up in its namespace.
        let mut peer = LinkUnspec::new_with_name(spec.peer_name);
        if let Some(f) = spec.peer_netns {
            peer = peer.setns_by_fd(f.as_raw_fd());
        }
        if let Some(m) = spec.peer_mac {
            peer = peer.address(m.0.to_vec());
        }
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .up();
        if let Some(m) = spec.master {
            b = b.controller(m);
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        if let Some(a) = spec.alias {
            b = b.alias(a);
        }
        if spec.group != 0 {
            b = b.link_group(spec.group);
        }
        self.h.link().add(b.build()).execute().await.map_err(|e| {
            from_rtnl(
                self.ctx(format!(
                    "create veth {} (peer {})",
                    spec.host_name, spec.peer_name
                )),
                e,
            )
        })
    }

    pub async fn change_link(&self, index: u32, c: LinkChange) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        match c.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        if let Some(mtu) = c.mtu {
            b = b.mtu(mtu);
        }
        if let Some(m) = c.mac {
            b = b.address(m.0.to_vec());
        }
        match c.master {
            Some(Some(m)) => b = b.controller(m),
            Some(None) => b = b.nocontroller(),
            None => {}
        }
        if let Some(a) = c.alias {
            b = b.alias(a);
        }
        self.h
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("change link ifindex {index}")), e))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.change_link(
            index,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        self.h
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("delete link ifindex {index}")), e))
    }

    /// Deletes every device of `group` in this namespace in one request:
    /// the kernel unregisters them as one batch, with one RCU grace period
    /// instead of one per device.
    pub async fn del_group(&self, group: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(0)
            .append_extra_attribute(LinkAttribute::Group(group))
            .build();
        self.h
            .link()
            .del_with_message(msg)
            .execute()
            .await
            .map_err(|e| from_rtnl(self.ctx(format!("delete link group {group}")), e))
    }

    /// Moves a link into the namespace behind `target`. The kernel refuses
    /// netns-local devices with a bare EINVAL; this says why.
    pub async fn move_link(
        &self,
        link: &Link,
        target: &std::fs::File,
        target_name: &str,
    ) -> Result<()> {
        if let Some(kind) = netns_local_kind(link) {
            return Err(Error::NetnsLocal {
                name: link.name.clone(),
                kind: kind.to_string(),
                target: target_name.to_string(),
            });
        }
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(target.as_raw_fd())
            .build();
        match self.h.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = from_rtnl(self.ctx(format!("move {} to {target_name}", link.name)), e);
                // Kinds we do not know to be netns-local can still be: the
                // kernel checks dev->netns_local and answers EINVAL.
                if err.errno() == Some(libc::EINVAL) {
                    return Err(Error::NetnsLocal {
                        name: link.name.clone(),
                        kind: link.kind.clone().unwrap_or_else(|| "device".into()),
                        target: target_name.to_string(),
                    });
                }
                Err(err)
            }
        }
    }
}

/// Whether the kernel will refuse to move `link` (`dev->netns_local`), and
/// what to call it. Kernels from 6.12 say so in IFLA_NETNS_IMMUTABLE; for
/// older ones the kinds known to be netns-local stand in.
pub fn netns_local_kind(link: &Link) -> Option<&'static str> {
    if link.netns_immutable == Some(false) {
        return None;
    }
    let named = known_netns_local(link);
    if link.netns_immutable == Some(true) {
        return Some(named.unwrap_or("device"));
    }
    named
}

fn known_netns_local(link: &Link) -> Option<&'static str> {
    if link.loopback {
        return Some("loopback");
    }
    match link.kind.as_deref() {
        Some("bridge") => Some("bridge"),
        // vxlan and geneve move between namespaces (6.18 reports them
        // movable); ppp and vrf are bound to theirs.
        Some("ppp") => Some("ppp"),
        Some("vrf") => Some("vrf"),
        _ => None,
    }
}

fn decode_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.link_layer_type == LinkLayerType::Loopback,
        master: None,
        link: None,
        link_netnsid: None,
        alias: None,
        ageing_time_cs: None,
        hairpin: None,
        netns_immutable: None,
        group: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = Mac::from_slice(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(v) => l.master = Some(*v),
            LinkAttribute::Link(v) => l.link = Some(*v),
            LinkAttribute::LinkNetNsId(v) => l.link_netnsid = Some(*v),
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::NetnsImmutable(v) => l.netns_immutable = Some(*v),
            LinkAttribute::Group(g) => l.group = *g,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Bridge(bs)) => {
                            for b in bs {
                                if let InfoBridge::AgeingTime(t) = b {
                                    l.ageing_time_cs = Some(*t);
                                }
                            }
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                            for p in ps {
                                if let InfoBridgePort::HairpinMode(h) = p {
                                    l.hairpin = Some(*h);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if l.loopback {
        l.mac = None;
    }
    l
}
