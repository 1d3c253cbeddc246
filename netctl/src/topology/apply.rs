//! Runs a plan against the kernel. Every change that creates something
//! records how to undo it; when a step fails, the undo log runs backwards so
//! a failed apply leaves the system as it found it (removals of objects the
//! new topology dropped are not undone).

use std::collections::HashMap;

use futures::StreamExt;
use ipnet::IpNet;

use super::model::{Datapath, Topology};
use super::plan::{self, Observed, PlannedRoute, Step};
use super::store;
use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::nl::{LinkChange, Nl, RouteSpec, VethSpec};
use crate::observe::NsView;
use crate::sysctl;

enum Undo {
    DeleteNetns(String),
    DeleteLink(Netns, String),
    DelAddr(Netns, String, IpNet),
    DelRoute(Netns, PlannedRoute),
    SetForward(Netns, bool),
    SetAgeing(Netns, String, u32),
    SetHairpin(Netns, String, bool),
    SetMtu(Netns, String, u32),
}

#[derive(Default)]
pub struct Executor {
    nls: HashMap<Netns, Nl>,
    undo: Vec<Undo>,
    /// Ifindexes this apply learned, so a bridge is not looked up once per
    /// port. Only forward steps use it; rollback starts from the kernel.
    idx: HashMap<(Netns, String), u32>,
    cache: bool,
}

impl Executor {
    async fn nl(&mut self, ns: &Netns) -> Result<&Nl> {
        if !self.nls.contains_key(ns) {
            let nl = Nl::open(ns).await?;
            self.nls.insert(ns.clone(), nl);
        }
        Ok(&self.nls[ns])
    }

    async fn index(&mut self, ns: &Netns, name: &str) -> Result<u32> {
        let key = (ns.clone(), name.to_string());
        if self.cache
            && let Some(i) = self.idx.get(&key)
        {
            return Ok(*i);
        }
        let i = self.nl(ns).await?.require_link(name).await?.index;
        if self.cache {
            self.idx.insert(key, i);
        }
        Ok(i)
    }

    async fn route_spec(&mut self, ns: &Netns, r: &PlannedRoute) -> Result<RouteSpec> {
        let oif = match &r.dev {
            Some(d) => Some(self.index(ns, d).await?),
            None => None,
        };
        Ok(RouteSpec {
            dst: r.to,
            gateway: r.via,
            oif,
            table: r.table,
            metric: r.metric,
        })
    }

    /// Creates namespaces on a few threads at once: the kernel builds
    /// namespaces concurrently, and each costs about a millisecond or two.
    /// Every one created is recorded for rollback, even when another fails.
    async fn create_namespaces(&mut self, names: &[&str]) -> Result<()> {
        const WORKERS: usize = 4;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let chunk = names.len().div_ceil(WORKERS);
        let results: Vec<(String, Result<std::os::fd::OwnedFd>)> =
            tokio::task::spawn_blocking(move || {
                std::thread::scope(|sc| {
                    let hs: Vec<_> = names
                        .chunks(chunk)
                        .map(|part| {
                            sc.spawn(move || {
                                part.iter()
                                    .map(|n| (n.clone(), netns::create(n, netns::route_socket)))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .flat_map(|h| h.join().unwrap_or_default())
                        .collect()
                })
            })
            .await
            .map_err(|e| Error::Invalid(format!("namespace workers: {e}")))?;
        let mut first_err = None;
        let mut made = Vec::new();
        for (name, r) in results {
            match r {
                Ok(fd) => {
                    self.undo.push(Undo::DeleteNetns(name.clone()));
                    made.push(Nl::from_socket(Netns::named(&name), fd));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // lo up everywhere, concurrently (one request per namespace).
        let ups = futures::future::join_all(made.iter().map(|nl| nl.set_up(1))).await;
        for nl in made {
            self.nls.insert(nl.ns.clone(), nl);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        ups.into_iter().collect()
    }

    pub async fn run(&mut self, step: &Step) -> Result<()> {
        match step {
            Step::CreateNetns { name } => {
                let nl = Nl::create_netns(name).await?;
                self.undo.push(Undo::DeleteNetns(name.clone()));
                self.nls.insert(nl.ns.clone(), nl);
            }
            Step::DeleteNetns { name } => {
                let ns = Netns::named(name);
                self.nls.remove(&ns);
                self.idx.retain(|(n, _), _| *n != ns);
                netns::delete(name)?;
            }
            Step::SetForward { ns, on } => {
                let before = sysctl::ip_forward(ns)?;
                sysctl::set_ip_forward(ns, *on)?;
                self.undo.push(Undo::SetForward(ns.clone(), before));
            }
            Step::CreateBridge {
                ns,
                name,
                ageing_time_s,
                mtu,
                alias,
            } => {
                let nl = self.nl(ns).await?;
                nl.add_bridge(name, Some(ageing_time_s * 100)).await?;
                let idx = nl.require_link(name).await?.index;
                self.undo.push(Undo::DeleteLink(ns.clone(), name.clone()));
                let nl = self.nl(ns).await?;
                nl.change_link(
                    idx,
                    LinkChange {
                        mtu: *mtu,
                        alias: Some(alias.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            }
            Step::SetAgeing {
                ns,
                name,
                ageing_time_s,
            } => {
                let l = self.nl(ns).await?.require_link(name).await?;
                self.nl(ns)
                    .await?
                    .set_bridge_ageing(l.index, ageing_time_s * 100)
                    .await?;
                if let Some(b) = l.ageing_time_cs {
                    self.undo.push(Undo::SetAgeing(ns.clone(), name.clone(), b));
                }
            }
            Step::SetMtu { ns, name, mtu } => {
                let l = self.nl(ns).await?.require_link(name).await?;
                self.nl(ns)
                    .await?
                    .change_link(
                        l.index,
                        LinkChange {
                            mtu: Some(*mtu),
                            ..Default::default()
                        },
                    )
                    .await?;
                self.undo
                    .push(Undo::SetMtu(ns.clone(), name.clone(), l.mtu));
            }
            Step::CreateVeth {
                ns,
                name,
                bridge,
                peer_netns,
                peer_name,
                mac,
                mtu,
                alias,
                group,
            } => {
                let master = match bridge {
                    Some(b) => Some(self.index(ns, b).await?),
                    None => None,
                };
                // The namespace file stays open until the request is done:
                // the kernel resolves the fd while handling it.
                let peer_file = Netns::named(peer_netns).open()?;
                let spec = VethSpec {
                    host_name: name,
                    master,
                    peer_name,
                    peer_netns: Some(&peer_file),
                    peer_mac: *mac,
                    mtu: *mtu,
                    alias: Some(alias),
                    group: *group,
                };
                self.nl(ns).await?.add_veth(&spec).await?;
                drop(peer_file);
                self.undo.push(Undo::DeleteLink(ns.clone(), name.clone()));
                let peer_ns = Netns::named(peer_netns);
                let idx = self.index(&peer_ns, peer_name).await?;
                self.nl(&peer_ns).await?.set_up(idx).await?;
            }
            Step::SetHairpin { ns, name, on } => {
                let l = self.nl(ns).await?.require_link(name).await?;
                self.nl(ns).await?.set_hairpin(l.index, *on).await?;
                self.undo.push(Undo::SetHairpin(
                    ns.clone(),
                    name.clone(),
                    l.hairpin.unwrap_or(false),
                ));
            }
            Step::DeleteLink { ns, name } => {
                let idx = self.index(ns, name).await?;
                self.nl(ns).await?.del_link(idx).await?;
                // A veth takes its peer along: nothing cached survives it.
                self.idx.clear();
            }
            Step::DeleteGroup { ns, group, .. } => {
                self.nl(ns).await?.del_group(*group).await?;
                self.idx.clear();
            }
            Step::AddAddr { ns, dev, net } => {
                let idx = self.index(ns, dev).await?;
                self.nl(ns).await?.add_addr(idx, *net).await?;
                self.undo.push(Undo::DelAddr(ns.clone(), dev.clone(), *net));
            }
            Step::DelAddr { ns, dev, net } => {
                let idx = self.index(ns, dev).await?;
                self.nl(ns).await?.del_addr(idx, *net).await?;
            }
            Step::AddRoute { ns, route } => {
                let spec = self.route_spec(ns, route).await?;
                self.nl(ns).await?.add_route(&spec).await?;
                self.undo.push(Undo::DelRoute(ns.clone(), route.clone()));
            }
            Step::DelRoute { ns, route } => {
                let spec = self.route_spec(ns, route).await?;
                self.nl(ns).await?.del_route(&spec).await?;
            }
        }
        Ok(())
    }

    /// Undoes everything recorded, newest first. Keeps going on errors (an
    /// earlier undo may have removed what a later one names, e.g. a deleted
    /// namespace takes its addresses with it) and returns how many ran.
    pub async fn rollback(&mut self) -> usize {
        self.cache = false;
        self.idx.clear();
        let mut n = 0;
        while let Some(u) = self.undo.pop() {
            let r: Result<()> = async {
                match u {
                    Undo::DeleteNetns(name) => {
                        self.nls.remove(&Netns::named(&name));
                        netns::delete(&name)
                    }
                    Undo::DeleteLink(ns, name) => {
                        let idx = self.index(&ns, &name).await?;
                        self.nl(&ns).await?.del_link(idx).await
                    }
                    Undo::DelAddr(ns, dev, net) => {
                        let idx = self.index(&ns, &dev).await?;
                        self.nl(&ns).await?.del_addr(idx, net).await
                    }
                    Undo::DelRoute(ns, r) => {
                        let spec = self.route_spec(&ns, &r).await?;
                        self.nl(&ns).await?.del_route(&spec).await
                    }
                    Undo::SetForward(ns, on) => sysctl::set_ip_forward(&ns, on),
                    Undo::SetAgeing(ns, name, cs) => {
                        let idx = self.index(&ns, &name).await?;
                        self.nl(&ns).await?.set_bridge_ageing(idx, cs).await
                    }
                    Undo::SetHairpin(ns, name, on) => {
                        let idx = self.index(&ns, &name).await?;
                        self.nl(&ns).await?.set_hairpin(idx, on).await
                    }
                    Undo::SetMtu(ns, name, mtu) => {
                        let idx = self.index(&ns, &name).await?;
                        let c = LinkChange {
                            mtu: Some(mtu),
                            ..Default::default()
                        };
                        self.nl(&ns).await?.change_link(idx, c).await
                    }
                }
            }
            .await;
            match r {
                Ok(()) => n += 1,
                Err(e) => tracing::debug!("rollback step failed (already gone?): {e}"),
            }
        }
        n
    }

    pub fn commit(&mut self) {
        self.undo.clear();
    }
}

/// Reads every namespace the two versions of a topology touch.
pub async fn observe(names: impl IntoIterator<Item = Netns>) -> Result<Observed> {
    let existing: std::collections::BTreeSet<String> = netns::list()?.into_iter().collect();
    let mut want: Vec<Netns> = names
        .into_iter()
        .filter(|n| match n {
            Netns::Current => true,
            Netns::Named(x) => existing.contains(x),
        })
        .collect();
    want.sort();
    want.dedup();
    let views: Vec<(Netns, Result<NsView>)> = futures::stream::iter(want)
        .map(|ns| async move {
            let v = match Nl::open(&ns).await {
                Ok(nl) => NsView::read(&nl).await,
                Err(e) => Err(e),
            };
            (ns, v)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut o = Observed {
        namespaces: existing,
        views: Default::default(),
    };
    for (ns, v) in views {
        o.views.insert(ns, v?);
    }
    Ok(o)
}

fn touched(t: &Topology) -> Vec<Netns> {
    let mut v = vec![t.host()];
    v.extend(t.owned_namespaces().into_iter().map(Netns::Named));
    v.extend(t.routes.iter().map(|r| t.route_netns(r)));
    v
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub topology: String,
    pub steps: Vec<Step>,
    pub dry_run: bool,
    /// What the eBPF datapath sync did (`None` for the kernel datapath).
    pub datapath: Option<crate::datapath::install::SyncReport>,
}

impl Report {
    pub fn changed(&self) -> bool {
        !self.steps.is_empty()
            || self.datapath.as_ref().is_some_and(|d| {
                !d.attached.is_empty() || !d.detached.is_empty() || !d.updated.is_empty()
            })
    }
}

/// Makes the kernel match `desired`. Validation already happened in
/// `parse`; conflicts with objects the topology does not own are refused
/// before any change.
pub async fn apply(desired: &Topology, dry_run: bool) -> Result<Report> {
    let prev = store::load(&desired.name)?;
    let mut ns = touched(desired);
    if let Some(p) = &prev {
        ns.extend(touched(p));
    }
    let observed = observe(ns).await?;
    let steps =
        plan::plan(desired, prev.as_ref(), &observed).map_err(|e| Error::Invalid(e.to_string()))?;
    if dry_run {
        return Ok(Report {
            topology: desired.name.clone(),
            steps,
            dry_run,
            datapath: None,
        });
    }
    let had_datapath = crate::datapath::pins::topology_dir(&desired.name).exists();
    // The verifier's work overlaps the netlink work.
    let prepare = (desired.datapath == Datapath::Ebpf).then(|| {
        let name = desired.name.clone();
        tokio::task::spawn_blocking(move || crate::datapath::install::load_program(&name))
    });
    let executed = execute(&steps).await;
    let prepared = match prepare {
        Some(h) => Some(
            h.await
                .unwrap_or_else(|e| Err(Error::Bpf(format!("loader thread: {e}")))),
        ),
        None => None,
    };
    let mut ex = match executed {
        Ok(ex) => ex,
        Err(e) => {
            if !had_datapath {
                let _ = crate::datapath::install::detach_blocking_pins_only(&desired.name);
            }
            return Err(e);
        }
    };
    if let Some(Err(e)) = prepared {
        if !had_datapath {
            let _ = crate::datapath::install::detach_blocking_pins_only(&desired.name);
        }
        let undone = ex.rollback().await;
        return Err(Error::Invalid(format!(
            "loading the eBPF datapath failed: {e}\nrolled back {undone} change(s) made by this apply"
        )));
    }
    let datapath = match desired.datapath {
        Datapath::Ebpf => match sync_datapath(desired).await {
            Ok(r) => Some(r),
            Err(e) => {
                // A datapath that was not there before goes with the rest.
                if !had_datapath {
                    let _ = crate::datapath::detach(desired).await;
                }
                let undone = ex.rollback().await;
                return Err(Error::Invalid(format!(
                    "attaching the eBPF datapath failed: {e}\nrolled back {undone} change(s) made by this apply"
                )));
            }
        },
        Datapath::Kernel => {
            let detached = crate::datapath::detach(desired).await?;
            Some(crate::datapath::install::SyncReport {
                detached: if detached { vec!["all".into()] } else { vec![] },
                ..Default::default()
            })
            .filter(|r| !r.detached.is_empty())
        }
    };
    ex.commit();
    if !steps.is_empty() || prev.as_ref() != Some(desired) {
        store::save(desired)?;
    }
    Ok(Report {
        topology: desired.name.clone(),
        steps,
        dry_run,
        datapath,
    })
}

/// Syncs the eBPF datapath, then the rules: the file's (with Docker's
/// before them when it asks for `docker_rules`), or else the live ones
/// compiled again (interfaces they name may have come or gone).
async fn sync_datapath(t: &Topology) -> Result<crate::datapath::install::SyncReport> {
    let report = crate::datapath::sync(t).await?;
    match super::docker::effective_rules(t) {
        Some(text) => {
            let rs = crate::rules::parse::parse(&text)?;
            crate::rules::live::replace(t, rs).await?;
        }
        None => {
            crate::rules::live::resync(t).await?;
        }
    }
    Ok(report)
}

/// Runs steps in order, rolling back on the first failure. The returned
/// executor can still roll back until committed. A run of namespace
/// creations is done in parallel.
pub async fn execute(steps: &[Step]) -> Result<Executor> {
    let mut ex = Executor {
        cache: true,
        ..Default::default()
    };
    let mut i = 0;
    while i < steps.len() {
        let run: Vec<&str> = steps[i..]
            .iter()
            .map_while(|s| match s {
                Step::CreateNetns { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let (res, n) = if run.len() > 1 {
            (ex.create_namespaces(&run).await, run.len())
        } else {
            (ex.run(&steps[i]).await, 1)
        };
        if let Err(e) = res {
            let undone = ex.rollback().await;
            let what = if n > 1 {
                format!(
                    "steps {}–{} of {} (creating namespaces)",
                    i + 1,
                    i + n,
                    steps.len()
                )
            } else {
                format!("step {} of {}: {}", i + 1, steps.len(), steps[i])
            };
            return Err(Error::Invalid(format!(
                "{what} failed: {e}\nrolled back {undone} change(s) made by this apply"
            )));
        }
        i += n;
    }
    Ok(ex)
}

/// Removes everything the applied topology `name` owns.
pub async fn destroy(name: &str) -> Result<Report> {
    let Some(owned) = store::load(name)? else {
        return Err(Error::Invalid(format!(
            "topology {name:?} is not applied (no record in {})",
            store::run_dir().display()
        )));
    };
    // Programs first: traffic falls back to the kernel bridge while the
    // rest is taken down.
    crate::datapath::detach(&owned).await?;
    crate::rules::store::remove(name)?;
    let observed = observe(touched(&owned)).await?;
    let steps = plan::plan_destroy(&owned, &observed);
    let mut ex = Executor::default();
    let mut first_err = None;
    for s in &steps {
        // Keep going: a destroy that stops half-way leaves more behind.
        if let Err(e) = ex.run(s).await
            && first_err.is_none()
        {
            first_err = Some(Error::Invalid(format!("{s}: {e}")));
        }
    }
    ex.commit();
    drop(ex);
    if let Some(e) = first_err {
        return Err(e);
    }
    store::remove(name)?;
    Ok(Report {
        topology: name.to_string(),
        steps,
        dry_run: false,
        datapath: None,
    })
}
