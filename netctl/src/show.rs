//! Kernel → report for `netctl show`: every namespace with its links,
//! addresses and routes, every veth with its peer (resolved over netlink
//! from IFLA_LINK + IFLA_LINK_NETNSID), every bridge with its ports and FDB.

use std::collections::BTreeMap;

use futures::StreamExt;
use ipnet::IpNet;
use serde::Serialize;

use crate::error::Result;
use crate::mac::Mac;
use crate::netns::{self, Netns};
use crate::nl::Nl;
use crate::observe::NsView;
use crate::state::{FdbEntry, Link, Route};

#[derive(Debug, Serialize)]
pub struct Report {
    pub namespaces: Vec<NsReport>,
}

#[derive(Debug, Serialize)]
pub struct NsReport {
    /// `null` for the namespace netctl runs in.
    pub name: Option<String>,
    pub ip_forward: bool,
    pub links: Vec<LinkReport>,
    pub routes: Vec<Route>,
    pub bridges: Vec<BridgeReport>,
}

#[derive(Debug, Serialize)]
pub struct LinkReport {
    #[serde(flatten)]
    pub link: Link,
    pub master_name: Option<String>,
    pub addresses: Vec<IpNet>,
    pub peer: Option<PeerRef>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerRef {
    /// `null` for the namespace netctl runs in.
    pub netns: Option<String>,
    pub ifindex: u32,
    /// `null` when the peer's namespace is not one netctl can name
    /// (not under /run/netns).
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BridgeReport {
    pub name: String,
    pub ports: Vec<String>,
    pub ageing_time_s: Option<u32>,
    pub fdb: Vec<FdbReport>,
}

#[derive(Debug, Serialize)]
pub struct FdbReport {
    pub mac: Mac,
    pub port: String,
    pub permanent: bool,
    pub age_s: Option<u32>,
}

struct Gathered {
    nl: Nl,
    view: NsView,
    fdb: Vec<FdbEntry>,
}

/// Reads the namespaces (all of them when `only` is empty).
pub async fn gather(only: &[Netns]) -> Result<Report> {
    let mut all: Vec<Netns> = vec![Netns::Current];
    all.extend(netns::list()?.into_iter().map(Netns::Named));
    let targets: Vec<Netns> = if only.is_empty() {
        all.clone()
    } else {
        only.to_vec()
    };
    // Peers can live in any namespace, so every one is read.
    let results: Vec<(Netns, Result<Gathered>)> = futures::stream::iter(all.clone())
        .map(|ns| async move {
            let r = async {
                let nl = Nl::open(&ns).await?;
                let view = NsView::read(&nl).await?;
                let fdb = nl.fdb().await?;
                Ok(Gathered { nl, view, fdb })
            }
            .await;
            (ns, r)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut g: BTreeMap<Netns, Gathered> = BTreeMap::new();
    for (ns, r) in results {
        match r {
            Ok(x) => {
                g.insert(ns, x);
            }
            // A namespace deleted while we read is simply gone.
            Err(crate::Error::NoSuchNetns(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // Files for RTM_GETNSID, opened once.
    let files: Vec<(Netns, std::fs::File)> = all
        .iter()
        .filter_map(|ns| ns.open().ok().map(|f| (ns.clone(), f)))
        .collect();

    let mut out = Vec::new();
    for ns in targets {
        let Some(me) = g.get(&ns) else {
            return Err(crate::Error::NoSuchNetns(ns.to_string()));
        };
        // nsid → namespace, as this namespace numbers the others: one
        // RTM_GETNSID per candidate, stopping once every id its veths use
        // is named (a container needs one, not one per namespace).
        let mut wanted: std::collections::BTreeSet<i32> = me
            .view
            .links
            .iter()
            .filter_map(|l| l.link_netnsid)
            .collect();
        let mut ids: BTreeMap<i32, Netns> = BTreeMap::new();
        for (other, f) in &files {
            if wanted.is_empty() {
                break;
            }
            if let Some(id) = me.nl.nsid_of(f).await?
                && wanted.remove(&id)
            {
                ids.insert(id, other.clone());
            }
        }
        let mut links = Vec::new();
        for l in &me.view.links {
            let peer = if l.kind.as_deref() == Some("veth") {
                l.link.map(|pidx| {
                    let pns = match l.link_netnsid {
                        None => Some(ns.clone()),
                        Some(id) => ids.get(&id).cloned(),
                    };
                    let name = pns
                        .as_ref()
                        .and_then(|p| g.get(p))
                        .and_then(|o| o.view.link_by_index(pidx))
                        .map(|pl| pl.name.clone());
                    PeerRef {
                        netns: pns.and_then(|p| p.name().map(str::to_string)),
                        ifindex: pidx,
                        name,
                    }
                })
            } else {
                None
            };
            links.push(LinkReport {
                link: l.clone(),
                master_name: l
                    .master
                    .and_then(|m| me.view.link_by_index(m))
                    .map(|m| m.name.clone()),
                addresses: me
                    .view
                    .addrs
                    .iter()
                    .filter(|a| a.index == l.index)
                    .map(|a| a.net)
                    .collect(),
                peer,
            });
        }
        let bridges = me
            .view
            .links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .map(|b| BridgeReport {
                name: b.name.clone(),
                ports: me
                    .view
                    .links
                    .iter()
                    .filter(|p| p.master == Some(b.index))
                    .map(|p| p.name.clone())
                    .collect(),
                ageing_time_s: b.ageing_time_cs.map(|c| c / 100),
                fdb: me
                    .fdb
                    .iter()
                    .filter(|f| {
                        f.master == Some(b.index) || (f.port == b.index && f.master.is_none())
                    })
                    .map(|f| FdbReport {
                        mac: f.mac,
                        port: me
                            .view
                            .link_by_index(f.port)
                            .map_or_else(|| f.port.to_string(), |l| l.name.clone()),
                        permanent: f.permanent,
                        age_s: f.age_s,
                    })
                    .collect(),
            })
            .collect();
        out.push(NsReport {
            name: ns.name().map(str::to_string),
            ip_forward: me.view.ip_forward,
            links,
            routes: me.view.routes.clone(),
            bridges,
        });
    }
    Ok(Report { namespaces: out })
}
