//! CLI handlers: parse arguments into library calls and print the result.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::args::*;
use netctl::netns::{self, Netns};
use netctl::nl::{LinkChange, Nl};
use netctl::observe::NsView;
use netctl::state::{RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN};
use netctl::{ops, render, route_get, show, topology};

fn ns_of(o: &NsOpt) -> Netns {
    Netns::from_opt(o.netns.as_deref())
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Show { netns, json } => {
            let only: Vec<Netns> = netns.into_iter().map(Netns::Named).collect();
            let r = show::gather(&only).await?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", render::show(&r));
            }
        }
        Cmd::Validate { file } => {
            let t = topology::load_file(&file)?;
            println!(
                "{}: topology {} is valid ({} bridges, {} containers, {} routes)",
                file.display(),
                t.name,
                t.bridges.len(),
                t.containers.len(),
                t.routes.len()
            );
        }
        Cmd::Apply {
            file,
            dry_run,
            json,
        } => {
            let t = topology::load_file(&file)?;
            let rep = topology::apply(&t, dry_run).await?;
            if json {
                return print_json(&rep);
            }
            if !rep.changed() {
                println!("topology {}: no changes", rep.topology);
            } else {
                for s in &rep.steps {
                    println!("{s}");
                }
                let mut count = rep.steps.len();
                if let Some(d) = &rep.datapath {
                    for a in &d.attached {
                        println!("+ ebpf datapath on {a} ({})", d.attach.name());
                    }
                    for a in &d.detached {
                        println!("- ebpf datapath link {a}");
                    }
                    for a in &d.updated {
                        println!("~ ebpf datapath link {a}: new program");
                    }
                    count += d.attached.len() + d.detached.len() + d.updated.len();
                }
                let verb = if dry_run { "would make" } else { "made" };
                println!("topology {}: {verb} {count} change(s)", rep.topology,);
            }
        }
        Cmd::Destroy { target } => {
            let name = if Path::new(&target).is_file() {
                topology::load_file(Path::new(&target))?.name
            } else {
                target
            };
            let rep = topology::destroy(&name).await?;
            for s in &rep.steps {
                println!("{s}");
            }
            println!("topology {name}: destroyed");
        }
        Cmd::Netns(c) => match c {
            NetnsCmd::Add { name } => ops::add_netns(&name).await?,
            NetnsCmd::Del { name } => ops::del_netns(&name)?,
            NetnsCmd::List => {
                for n in netns::list()? {
                    println!("{n}");
                }
            }
            NetnsCmd::Exec { .. } => unreachable!("handled before the runtime starts"),
        },
        Cmd::Link(c) => match c {
            LinkCmd::Show { ns, json } => {
                let nl = Nl::open(&ns_of(&ns)).await?;
                let links = nl.links().await?;
                if json {
                    return print_json(&links);
                }
                for l in links {
                    println!(
                        "{}: {} {} mtu {} {}",
                        l.index,
                        l.name,
                        l.kind.as_deref().unwrap_or("-"),
                        l.mtu,
                        if l.up { "UP" } else { "DOWN" }
                    );
                }
            }
            LinkCmd::Move { dev, to, ns } => ops::move_link(&ns_of(&ns), &dev, &to).await?,
            LinkCmd::Set {
                dev,
                state,
                mtu,
                mac,
                ns,
            } => {
                let mac = match mac {
                    Some(m) => Some(m.parse().map_err(anyhow::Error::msg)?),
                    None => None,
                };
                let change = LinkChange {
                    up: state.map(|s| s == "up"),
                    mtu,
                    mac,
                    ..Default::default()
                };
                ops::set_link(&ns_of(&ns), &dev, change).await?
            }
            LinkCmd::Del { dev, ns } => ops::del_link(&ns_of(&ns), &dev).await?,
        },
        Cmd::Veth(VethCmd::Add {
            name,
            peer,
            peer_netns,
            bridge,
            mac,
            mtu,
            ns,
        }) => {
            let mac = match mac {
                Some(m) => Some(m.parse().map_err(anyhow::Error::msg)?),
                None => None,
            };
            ops::add_veth(ops::VethRequest {
                ns: ns_of(&ns),
                name: &name,
                peer: &peer,
                peer_netns: peer_netns.as_deref(),
                bridge: bridge.as_deref(),
                mac,
                mtu,
            })
            .await?
        }
        Cmd::Bridge(c) => match c {
            BridgeCmd::Add { name, ageing, ns } => {
                ops::add_bridge(&ns_of(&ns), &name, ageing).await?
            }
            BridgeCmd::Del { name, ns } => ops::del_link(&ns_of(&ns), &name).await?,
            BridgeCmd::Attach { bridge, port, ns } => {
                ops::attach(&ns_of(&ns), &bridge, &port).await?
            }
            BridgeCmd::Detach { port, ns } => ops::detach(&ns_of(&ns), &port).await?,
            BridgeCmd::Ageing {
                bridge,
                seconds,
                ns,
            } => ops::set_ageing(&ns_of(&ns), &bridge, seconds).await?,
            BridgeCmd::Hairpin { port, state, ns } => {
                ops::set_hairpin(&ns_of(&ns), &port, state == "on").await?
            }
        },
        Cmd::Addr(c) => {
            let ns = match &c {
                AddrCmd::Add { ns, .. } | AddrCmd::Del { ns, .. } => ns_of(ns),
            };
            match c {
                AddrCmd::Add { addr, dev, .. } => ops::add_addr(&ns, &dev, addr).await?,
                AddrCmd::Del { addr, dev, .. } => ops::del_addr(&ns, &dev, addr).await?,
            }
            resync(&ns).await?;
        }
        Cmd::Route(c) => {
            let ns = match &c {
                RouteCmd::Add(r) | RouteCmd::Del(r) => Some(ns_of(&r.ns)),
                _ => None,
            };
            route(c).await?;
            if let Some(ns) = ns {
                resync(&ns).await?;
            }
        }
        Cmd::Datapath(c) => super::datapath::datapath(c).await?,
        Cmd::Maps(c) => super::datapath::maps(c).await?,
        Cmd::Fdb(c) => super::datapath::fdb(c).await?,
        Cmd::Stats { t, json } => super::datapath::stats(t, json).await?,
        Cmd::Trace { t, duration } => super::datapath::trace(t, duration).await?,
        Cmd::Rules { topology, args } => super::rules::run(topology, args).await?,
        Cmd::Conntrack(c) => super::conntrack::run(c)?,
        Cmd::Forward { state, ns } => {
            let ns = ns_of(&ns);
            match state.as_str() {
                "show" => println!("ip_forward={}", u8::from(netctl::sysctl::ip_forward(&ns)?)),
                s => {
                    netctl::sysctl::set_ip_forward(&ns, s == "on")?;
                    resync(&ns).await?;
                }
            }
        }
    }
    Ok(())
}

fn parse_table(t: &str) -> Result<Option<u32>> {
    Ok(match t {
        "all" => None,
        "main" => Some(RT_TABLE_MAIN),
        "local" => Some(RT_TABLE_LOCAL),
        "default" => Some(RT_TABLE_DEFAULT),
        n => Some(n.parse().with_context(|| {
            format!("table {n:?} is not main, local, default, all or a number")
        })?),
    })
}

async fn route(c: RouteCmd) -> Result<()> {
    match c {
        RouteCmd::Show { table, ns, json } => {
            let table = parse_table(&table)?;
            let nl = Nl::open(&ns_of(&ns)).await?;
            let view = NsView::read(&nl).await?;
            let routes: Vec<_> = view
                .routes
                .iter()
                .filter(|r| table.is_none_or(|t| r.table == t))
                .cloned()
                .collect();
            if json {
                return print_json(&routes);
            }
            let dev = |i: u32| {
                view.link_by_index(i)
                    .map_or_else(|| format!("if{i}"), |l| l.name.clone())
            };
            for r in &routes {
                println!("{}", render::route_line(r, &dev, table.is_none()));
            }
        }
        RouteCmd::Get { addr, ns, json } => {
            let nl = Nl::open(&ns_of(&ns)).await?;
            let view = NsView::read(&nl).await?;
            let d = route_get::explain(&view.routes, addr);
            if json {
                return print_json(&d);
            }
            let dev = |i: u32| {
                view.link_by_index(i)
                    .map_or_else(|| format!("if{i}"), |l| l.name.clone())
            };
            println!("{}", d.describe(&dev));
            if d.reason == route_get::Reason::NoRoute {
                bail!("no route to {addr}");
            }
        }
        RouteCmd::Add(r) => ops::add_route(&ns_of(&r.ns), request(&r)).await?,
        RouteCmd::Del(r) => ops::del_route(&ns_of(&r.ns), request(&r)).await?,
    }
    Ok(())
}

fn request(r: &RouteArgs) -> ops::RouteRequest<'_> {
    ops::RouteRequest {
        to: &r.to,
        via: r.via,
        dev: r.dev.as_deref(),
        table: r.table,
        metric: r.metric,
    }
}

/// The eBPF datapath mirrors its host namespace's routes, local addresses
/// and forwarding switch: after changing them there, netctl brings every
/// datapath of that namespace up to date.
async fn resync(ns: &Netns) -> Result<()> {
    for name in topology::store::list()? {
        let Some(t) = topology::store::load(&name)? else {
            continue;
        };
        if t.datapath == topology::Datapath::Ebpf
            && t.host() == *ns
            && netctl::datapath::pins::topology_dir(&name).exists()
        {
            netctl::datapath::sync(&t).await?;
        }
    }
    Ok(())
}
