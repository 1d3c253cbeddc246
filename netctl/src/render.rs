//! Model → text, in the shapes operators know from iproute2.

use std::fmt::Write;

use crate::route_get::table_name;
use crate::show::Report;
use crate::state::{RT_TABLE_MAIN, Route, RouteKind};

/// One route as `ip route` prints it. `with_table` adds `table X` for
/// tables other than main.
pub fn route_line(r: &Route, dev: &dyn Fn(u32) -> String, with_table: bool) -> String {
    let mut s = String::new();
    if r.kind != RouteKind::Unicast {
        s.push_str(r.kind.as_str());
        s.push(' ');
    }
    if r.dst.prefix_len() == 0 {
        s.push_str("default");
    } else if r.dst.prefix_len() == r.dst.max_prefix_len() {
        write!(s, "{}", r.dst.addr()).unwrap();
    } else {
        write!(s, "{}", r.dst).unwrap();
    }
    if let Some(g) = r.gateway {
        write!(s, " via {g}").unwrap();
    }
    if let Some(o) = r.oif {
        write!(s, " dev {}", dev(o)).unwrap();
    }
    if with_table && r.table != RT_TABLE_MAIN {
        write!(s, " table {}", table_name(r.table)).unwrap();
    }
    if r.protocol != "boot" && r.protocol != "unspec" {
        write!(s, " proto {}", r.protocol).unwrap();
    }
    if r.scope != "global" {
        write!(s, " scope {}", r.scope).unwrap();
    }
    if let Some(p) = r.prefsrc {
        write!(s, " src {p}").unwrap();
    }
    if let Some(m) = r.metric
        && m != 0
    {
        write!(s, " metric {m}").unwrap();
    }
    s
}

pub fn show(report: &Report) -> String {
    let mut s = String::new();
    for ns in &report.namespaces {
        let title = ns.name.as_deref().unwrap_or("(current namespace)");
        writeln!(s, "netns {title}  ip_forward={}", u8::from(ns.ip_forward)).unwrap();
        for l in &ns.links {
            let mut line = format!(
                "  {}: {}{} <{}> mtu {}",
                l.link.index,
                l.link.name,
                l.link
                    .kind
                    .as_deref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default(),
                if l.link.up { "UP" } else { "DOWN" },
                l.link.mtu
            );
            if let Some(m) = l.link.mac {
                write!(line, " {m}").unwrap();
            }
            if let Some(m) = &l.master_name {
                write!(line, " master {m}").unwrap();
            }
            if let Some(p) = &l.peer {
                let pname = p.name.clone().unwrap_or_else(|| format!("if{}", p.ifindex));
                let pns = p.netns.as_deref().unwrap_or("(current)");
                write!(line, " peer {pname}@{pns}").unwrap();
            }
            writeln!(s, "{line}").unwrap();
            for a in &l.addresses {
                writeln!(
                    s,
                    "      inet{} {a}",
                    if a.addr().is_ipv6() { "6" } else { "" }
                )
                .unwrap();
            }
        }
        let dev = |i: u32| {
            ns.links
                .iter()
                .find(|l| l.link.index == i)
                .map_or_else(|| format!("if{i}"), |l| l.link.name.clone())
        };
        let main: Vec<&Route> = ns.routes.iter().filter(|r| r.table != 255).collect();
        if !main.is_empty() {
            writeln!(s, "  routes:").unwrap();
            for r in main {
                writeln!(s, "    {}", route_line(r, &dev, true)).unwrap();
            }
        }
        for b in &ns.bridges {
            writeln!(
                s,
                "  bridge {}: ports [{}] ageing {}s",
                b.name,
                b.ports.join(", "),
                b.ageing_time_s.map_or("?".into(), |a| a.to_string())
            )
            .unwrap();
            for f in &b.fdb {
                let age = if f.permanent {
                    "permanent".to_string()
                } else {
                    format!("{}s", f.age_s.unwrap_or(0))
                };
                writeln!(s, "    fdb {} port {} {age}", f.mac, f.port).unwrap();
            }
        }
        s.push('\n');
    }
    s
}
