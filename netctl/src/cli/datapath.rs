//! CLI handlers for the datapath: sync/detach/xdp, maps, fdb, stats, trace.

use std::time::Duration;

use anyhow::{Result, bail};

use super::args::*;
use super::commands::print_json;
use netctl::datapath::{self, inspect, pins};
use netctl::nl::Nl;
use netctl::topology::{Topology, store};

fn record(name: &str) -> Result<Topology> {
    match store::load(name)? {
        Some(t) => Ok(t),
        None => bail!("topology {name:?} is not applied"),
    }
}

/// The topology to look at: the one named, or the only one with a datapath.
pub(super) fn pick(t: &TopoOpt) -> Result<String> {
    if let Some(n) = &t.topology {
        return Ok(n.clone());
    }
    let all = pins::topologies()?;
    match all.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no topology has an eBPF datapath attached"),
        many => bail!(
            "several topologies have a datapath ({}); choose one with --topology",
            many.join(", ")
        ),
    }
}

/// Ifindex → name in the topology's host namespace.
async fn names(topology: &str) -> Result<inspect::Names> {
    let Some(t) = store::load(topology)? else {
        return Ok(Default::default());
    };
    let nl = Nl::open(&t.host()).await?;
    Ok(nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect())
}

pub async fn datapath(c: DatapathCmd) -> Result<()> {
    match c {
        DatapathCmd::Sync { topology } => {
            let t = record(&topology)?;
            let r = datapath::sync(&t).await?;
            println!(
                "topology {topology}: datapath synced (attached {}, detached {})",
                r.attached.len(),
                r.detached.len()
            );
        }
        DatapathCmd::Detach { topology } => {
            // Without a record there is no knowing where the ports are: only
            // the pins go (never guess at the current namespace's devices).
            let done = match store::load(&topology)? {
                Some(t) => datapath::detach(&t).await?,
                None => datapath::install::detach_blocking_pins_only(&topology)?,
            };
            if done {
                println!("topology {topology}: eBPF datapath detached; the kernel bridge forwards");
            } else {
                println!("topology {topology}: no eBPF datapath attached");
            }
        }
        DatapathCmd::Xdp { topology, state } => {
            let t = record(&topology)?;
            let changed = datapath::install::xdp(&t, state == "on").await?;
            println!(
                "topology {topology}: xdp {state} ({} port(s) changed)",
                changed.len()
            );
        }
        DatapathCmd::Verify { program, json } => {
            let names: Vec<String> = match program {
                Some(p) => vec![p],
                None => datapath::verify::PROGRAMS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            let mut out = Vec::new();
            for n in &names {
                out.push(datapath::verify::verify(n)?);
            }
            if json {
                return print_json(&out);
            }
            for v in out {
                println!(
                    "{}: accepted ({} instructions, {} verified)",
                    v.program,
                    v.xlated_insns.map_or("?".into(), |x| x.to_string()),
                    v.verified_insns.map_or("?".into(), |x| x.to_string())
                );
            }
        }
        DatapathCmd::Profile {
            topology,
            seconds,
            json,
        } => {
            let v = datapath::profile::take(&topology, Duration::from_secs(seconds))?;
            if json {
                return print_json(&v);
            }
            println!(
                "{:<28} {:>10} {:>14} {:>10}",
                "PROGRAM", "RUNS", "NS", "NS/RUN"
            );
            for c in v {
                println!(
                    "{:<28} {:>10} {:>14} {:>10.1}",
                    c.program, c.runs, c.run_ns, c.ns_per_run
                );
            }
        }
        DatapathCmd::Status { json } => {
            let mut rows = Vec::new();
            for t in pins::topologies()? {
                let ports = datapath::install::attached_ports(&t)?;
                let attach = datapath::install::attached_as(&t)?.map(|a| a.name());
                rows.push(serde_json::json!({
                    "topology": t,
                    "attach": attach,
                    "ports": ports.iter().map(|(n, i)| serde_json::json!({"ifname": n, "ifindex": i})).collect::<Vec<_>>(),
                }));
            }
            if json {
                return print_json(&rows);
            }
            for r in rows {
                let ports: Vec<String> = r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["ifname"].as_str().unwrap().to_string())
                    .collect();
                println!(
                    "{}: {} port(s) by {}: {}",
                    r["topology"].as_str().unwrap(),
                    ports.len(),
                    r["attach"].as_str().unwrap_or("-"),
                    ports.join(" ")
                );
            }
        }
    }
    Ok(())
}

pub async fn maps(c: MapsCmd) -> Result<()> {
    match c {
        MapsCmd::List { t, json } => {
            let l = inspect::list(t.topology.as_deref())?;
            if json {
                return print_json(&l);
            }
            println!(
                "{:<16} {:<20} {:<14} {:>5} {:>6} {:>8} {:>8}",
                "TOPOLOGY", "MAP", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES"
            );
            for m in l {
                println!(
                    "{:<16} {:<20} {:<14} {:>5} {:>6} {:>8} {:>8}",
                    m.topology, m.name, m.kind, m.key_size, m.value_size, m.max_entries, m.entries
                );
            }
        }
        MapsCmd::Dump { name, t, json } => {
            let topo = pick(&t)?;
            let n = names(&topo).await?;
            let d = inspect::dump(&topo, &name, &n)?;
            if json {
                return print_json(&d);
            }
            print_dump(&d);
        }
    }
    Ok(())
}

fn print_dump(d: &inspect::Dump) {
    use inspect::Dump;
    match d {
        Dump::Ports(v) => {
            for p in v {
                println!(
                    "{} (ifindex {}) bridge {} ({}) ageing {}s{}",
                    p.port,
                    p.ifindex,
                    p.bridge,
                    p.bridge_mac,
                    p.ageing_s,
                    if p.hairpin { " hairpin" } else { "" }
                );
            }
        }
        Dump::Fdb(v) => print_fdb(v),
        Dump::Routes(v) => {
            for r in v {
                let mut line = format!("{} {}", r.prefix, r.kind);
                if let Some(g) = r.gateway {
                    line.push_str(&format!(" via {g}"));
                }
                if let Some(b) = &r.bridge {
                    line.push_str(&format!(" dev {b}"));
                }
                println!("{line}");
            }
        }
        Dump::Neigh(v) => {
            for n in v {
                println!("{} lladdr {} bridge {}", n.address, n.mac, n.bridge);
            }
        }
        Dump::Decisions(m) => {
            for (k, v) in m {
                println!("{k:<22} {v}");
            }
        }
        Dump::PortStats(v) => print_port_stats(v),
        Dump::Config(m) => {
            for (k, v) in m {
                println!("{k} = {v}");
            }
        }
        Dump::IfCounters(v) => {
            for (n, p, b) in v {
                println!("{n} packets {p} bytes {b}");
            }
        }
        Dump::Conntrack(v) => print_conntrack(v),
        Dump::RsHooks(v) => {
            println!(
                "{:>3} {:<12} {:>8} {:<12} LIVE",
                "GEN", "HOOK", "ENTRIES", "NAT"
            );
            for h in v {
                let nat = if h.nat_start < h.nat_end {
                    format!("{}..{}", h.nat_start, h.nat_end)
                } else {
                    "-".into()
                };
                println!(
                    "{:>3} {:<12} {:>8} {:<12} {}",
                    h.generation,
                    h.hook,
                    h.entries,
                    nat,
                    if h.live { "yes" } else { "no" }
                );
            }
        }
        Dump::RsEntries(v) => {
            println!(
                "{:<12} {:>6} {:<9} {:>7} {:>7} {:<22} LOG",
                "HOOK", "INDEX", "KIND", "TARGET", "SLOT", "REJECT"
            );
            let dash = |x: Option<u32>| x.map_or("-".to_string(), |n| n.to_string());
            for e in v {
                let log = match (e.log, &e.log_prefix) {
                    (Some(i), Some(p)) => format!("{i} {p:?}"),
                    (Some(i), None) => i.to_string(),
                    _ => "-".into(),
                };
                println!(
                    "{:<12} {:>6} {:<9} {:>7} {:>7} {:<22} {}",
                    e.hook,
                    e.index,
                    e.kind,
                    dash(e.target),
                    dash(e.slot),
                    e.reject.as_deref().unwrap_or("-"),
                    log
                );
            }
        }
        Dump::RsClass(v) => {
            let w = v.iter().map(|c| c.value.len()).max().unwrap_or(0).max(5);
            println!(
                "{:>3} {:<12} {:<8} {:<w$} {:>6}",
                "GEN", "HOOK", "FIELD", "VALUE", "CLASS"
            );
            for c in v {
                println!(
                    "{:>3} {:<12} {:<8} {:<w$} {:>6}",
                    c.generation, c.hook, c.field, c.value, c.class
                );
            }
        }
        Dump::RsSummary(v) => {
            println!(
                "{:>3} {:<12} {:<8} {:>6} BLOCKS",
                "GEN", "HOOK", "FIELD", "CLASS"
            );
            for r in v {
                println!(
                    "{:>3} {:<12} {:<8} {:>6} {}",
                    r.generation,
                    r.hook,
                    r.field,
                    r.class.to_string(),
                    join(&r.blocks)
                );
            }
        }
        Dump::RsWords(v) => {
            println!(
                "{:>3} {:<12} {:<8} {:>6} {:>6} ENTRIES",
                "GEN", "HOOK", "FIELD", "CLASS", "BLOCK"
            );
            for r in v {
                println!(
                    "{:>3} {:<12} {:<8} {:>6} {:>6} {}",
                    r.generation,
                    r.hook,
                    r.field,
                    r.class.to_string(),
                    r.block,
                    join(&r.entries)
                );
            }
        }
        Dump::CtNat(v) => {
            println!("{:<5} {:<44} CONNECTION", "PROTO", "REPLY TUPLE");
            for r in v {
                println!(
                    "{:<5} {:<44} {} {}",
                    r.protocol,
                    format!("{} {}", r.reply_a, r.reply_b),
                    r.conn_a,
                    r.conn_b
                );
            }
        }
        Dump::NatSrc(v) => {
            println!("{:<5} {:<22} CONNECTIONS (NEWEST FIRST)", "PROTO", "SOURCE");
            for r in v {
                let conns: Vec<String> = r
                    .connections
                    .iter()
                    .map(|[a, b]| format!("{a} {b}"))
                    .collect();
                println!("{:<5} {:<22} {}", r.protocol, r.source, conns.join(", "));
            }
        }
        Dump::RsNat(v) => {
            println!(
                "{:>3} {:>5} {:<4} {:<10} TO",
                "GEN", "INDEX", "LIVE", "KIND"
            );
            for n in v {
                let to = match (&n.addresses, &n.ports) {
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    (Some(a), None) => a.clone(),
                    (None, Some(p)) => format!("ports {p}"),
                    (None, None) => "-".into(),
                };
                let live = if n.live { "yes" } else { "no" };
                println!(
                    "{:>3} {:>5} {:<4} {:<10} {to}",
                    n.generation, n.index, live, n.kind
                );
            }
        }
        Dump::IfAddr(v) => {
            for a in v {
                println!("{} {}", a.interface, a.address);
            }
        }
        Dump::RsLog(v) => {
            println!(
                "{:>3} {:>5} {:<4} {:<4} PREFIX",
                "GEN", "INDEX", "LIVE", "USED"
            );
            let yn = |b: bool| if b { "yes" } else { "no" };
            for l in v {
                println!(
                    "{:>3} {:>5} {:<4} {:<4} {:?}",
                    l.generation,
                    l.index,
                    yn(l.live),
                    yn(l.used),
                    l.prefix
                );
            }
        }
        Dump::RsCounters(v) => {
            println!("{:>7} {:>12} {:>14} ENTRIES", "SLOT", "PACKETS", "BYTES");
            for c in v {
                println!(
                    "{:>7} {:>12} {:>14} {}",
                    c.slot,
                    c.packets,
                    c.bytes,
                    if c.entries.is_empty() {
                        "-".to_string()
                    } else {
                        c.entries.join(" ")
                    }
                );
            }
        }
    }
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn print_conntrack(v: &[inspect::CtRow]) {
    let orig: Vec<String> = v.iter().map(|c| c.original.to_string()).collect();
    let reply: Vec<String> = v.iter().map(|c| c.reply.to_string()).collect();
    let wo = orig.iter().map(String::len).max().unwrap_or(0).max(8);
    let wr = reply.iter().map(String::len).max().unwrap_or(0).max(5);
    println!(
        "{:<5} {:<wo$} {:<wr$} {:<12} {:>10} {:>10} {:>15} {:>21} NAT",
        "PROTO", "ORIGINAL", "REPLY", "STATE", "AGE", "TIMEOUT", "PACKETS", "BYTES"
    );
    for ((c, o), r) in v.iter().zip(&orig).zip(&reply) {
        let timeout = if c.expired {
            "expired".to_string()
        } else {
            format!("{:.2}s", c.timeout_s)
        };
        println!(
            "{:<5} {:<wo$} {:<wr$} {:<12} {:>10} {:>10} {:>15} {:>21} {}",
            c.protocol,
            o,
            r,
            c.state,
            format!("{:.2}s", c.age_s),
            timeout,
            format!("{}/{}", c.orig_packets, c.reply_packets),
            format!("{}/{}", c.orig_bytes, c.reply_bytes),
            c.nat.as_deref().unwrap_or("-"),
        );
    }
}

fn print_fdb(v: &[inspect::FdbRow]) {
    for f in v {
        println!(
            "{} dev {} master {} age {:.2}s{}",
            f.mac,
            f.port,
            f.bridge,
            f.age_s,
            if f.expired { " (expired)" } else { "" }
        );
    }
}

fn print_port_stats(v: &[inspect::PortStatsRow]) {
    println!(
        "{:<16} {:>12} {:>14} {:>12} {:>12} {:>12}",
        "PORT", "RX_PACKETS", "RX_BYTES", "REDIRECTED", "(STEADY)", "PASSED"
    );
    for p in v {
        println!(
            "{:<16} {:>12} {:>14} {:>12} {:>12} {:>12}",
            p.port, p.rx_packets, p.rx_bytes, p.redirected, p.steady_l2, p.passed
        );
    }
}

pub async fn fdb(c: FdbCmd) -> Result<()> {
    let FdbCmd::Show { t, json } = c;
    let topo = pick(&t)?;
    let n = names(&topo).await?;
    let v = inspect::fdb(&topo, &n)?;
    if json {
        return print_json(&v);
    }
    print_fdb(&v);
    Ok(())
}

pub async fn stats(t: TopoOpt, json: bool) -> Result<()> {
    let topo = pick(&t)?;
    let n = names(&topo).await?;
    let s = inspect::stats(&topo, &n)?;
    if json {
        return print_json(&s);
    }
    println!("decisions:");
    for (k, v) in &s.decisions {
        println!("  {k:<22} {v}");
    }
    let f = |k| s.flow_cache.get(k).copied().unwrap_or(0);
    println!(
        "rule flow cache: {} hit, {} miss, {} stored",
        f("hit"),
        f("miss"),
        f("stored")
    );
    println!();
    print_port_stats(&s.ports);
    Ok(())
}

pub async fn trace(t: TopoOpt, duration: Option<f64>) -> Result<()> {
    let topo = pick(&t)?;
    datapath::trace::run(&topo, duration.map(Duration::from_secs_f64)).await?;
    Ok(())
}
