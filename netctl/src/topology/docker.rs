//! Docker's defaults as netctl rules: what Docker's bridge driver (iptables
//! backend, Docker 20.10–27, `--userland-proxy=false`, i.e. hairpin mode)
//! writes into the filter and nat tables for a topology's bridges and
//! published ports, as iptables-save text.
//!
//! The text is what `iptables-save` shows on such a Docker host, with one
//! adaptation: netctl has no `-m addrtype`, so `--dst-type LOCAL` (and
//! `--src-type LOCAL`) become one rule per address of the host namespace
//! (`-d ADDR/32`): the uplink's address and the bridges' IPv4 addresses.
//! Loopback addresses are not among them, so the host reaches published
//! ports through those addresses, not through 127.0.0.1.
//!
//! Order: bridges are taken as created in file order. Docker inserts (`-I`)
//! each network's FORWARD, POSTROUTING and isolation rules at the top of
//! their chains, so the last bridge of the file comes first; per-port rules
//! are appended in container, then `publish`, order.
//!
//! A topology's own `rules` are merged after the generated ones (`merge`).

use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::IpNet;

use super::model::Topology;
use crate::rules::parse::RuleError;

/// Docker's last rule in DOCKER-USER. The user's own DOCKER-USER rules go
/// before it, where `iptables -I DOCKER-USER` puts them on a Docker host.
const DOCKER_USER_RETURN: &str = "-A DOCKER-USER -j RETURN";

/// Every IPv4 address of the host namespace the topology gives it: the
/// uplink's, then the bridges' in file order. These stand in for
/// `-m addrtype --dst-type LOCAL`.
pub fn host_addresses(t: &Topology) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = t.uplink.iter().map(|u| u.address.addr()).collect();
    for b in &t.bridges {
        for a in &b.addresses {
            if let IpNet::V4(a) = a
                && !v.contains(&a.addr())
            {
                v.push(a.addr());
            }
        }
    }
    v
}

/// The filter and nat tables Docker's bridge driver would write for `t`,
/// in iptables-save format and in the order `netctl rules save` prints
/// them (filter, then nat).
pub fn rules(t: &Topology) -> String {
    let hosts = host_addresses(t);
    // Newest network first, as Docker's `-I` leaves them.
    let bridges: Vec<_> = t.bridges.iter().rev().collect();
    // (container address, bridge, publish), in container and publish order.
    let published: Vec<_> = t
        .containers
        .iter()
        .filter_map(|c| c.ipv4().map(|ip| (c, ip)))
        .flat_map(|(c, ip)| c.publish.iter().map(move |p| (ip, c.bridge.as_str(), p)))
        .collect();

    let mut f = String::new();
    let w = &mut f;
    let _ = writeln!(w, "*filter");
    let _ = writeln!(w, ":INPUT ACCEPT [0:0]");
    let _ = writeln!(w, ":FORWARD DROP [0:0]");
    let _ = writeln!(w, ":OUTPUT ACCEPT [0:0]");
    for c in [
        "DOCKER",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-ISOLATION-STAGE-2",
        "DOCKER-USER",
    ] {
        let _ = writeln!(w, ":{c} - [0:0]");
    }
    let _ = writeln!(w, "-A FORWARD -j DOCKER-USER");
    let _ = writeln!(w, "-A FORWARD -j DOCKER-ISOLATION-STAGE-1");
    for b in &bridges {
        let b = &b.name;
        let _ = writeln!(
            w,
            "-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let _ = writeln!(w, "-A FORWARD -o {b} -j DOCKER");
        let _ = writeln!(w, "-A FORWARD -i {b} ! -o {b} -j ACCEPT");
        let _ = writeln!(w, "-A FORWARD -i {b} -o {b} -j ACCEPT");
    }
    for (ip, b, p) in &published {
        let proto = p.proto.name();
        let _ = writeln!(
            w,
            "-A DOCKER -d {ip}/32 ! -i {b} -o {b} -p {proto} -m {proto} --dport {} -j ACCEPT",
            p.container_port
        );
    }
    for b in &bridges {
        let _ = writeln!(
            w,
            "-A DOCKER-ISOLATION-STAGE-1 -i {0} ! -o {0} -j DOCKER-ISOLATION-STAGE-2",
            b.name
        );
    }
    let _ = writeln!(w, "-A DOCKER-ISOLATION-STAGE-1 -j RETURN");
    for b in &bridges {
        let _ = writeln!(w, "-A DOCKER-ISOLATION-STAGE-2 -o {} -j DROP", b.name);
    }
    let _ = writeln!(w, "-A DOCKER-ISOLATION-STAGE-2 -j RETURN");
    let _ = writeln!(w, "{DOCKER_USER_RETURN}");
    let _ = writeln!(w, "COMMIT");

    let _ = writeln!(w, "*nat");
    for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(w, ":{c} ACCEPT [0:0]");
    }
    let _ = writeln!(w, ":DOCKER - [0:0]");
    // `-m addrtype --dst-type LOCAL -j DOCKER`; in hairpin mode OUTPUT has
    // no `! -d 127.0.0.0/8`, and none is needed here.
    for chain in ["PREROUTING", "OUTPUT"] {
        for h in &hosts {
            let _ = writeln!(w, "-A {chain} -d {h}/32 -j DOCKER");
        }
    }
    for b in &bridges {
        // Hairpin mode's "MASQ LOCAL HOST" rule, `-o B -m addrtype
        // --src-type LOCAL -j MASQUERADE` (inserted above the network's
        // masquerade): the host's own connections to published ports,
        // DNATed into B, leave with B's address. B's own addresses are left
        // out: masquerading them to B's address changes nothing.
        let own: Vec<Ipv4Addr> = b
            .addresses
            .iter()
            .filter_map(|a| match a {
                IpNet::V4(a) => Some(a.addr()),
                IpNet::V6(_) => None,
            })
            .collect();
        for h in hosts.iter().filter(|h| !own.contains(h)) {
            let _ = writeln!(w, "-A POSTROUTING -s {h}/32 -o {} -j MASQUERADE", b.name);
        }
        for a in &b.addresses {
            if let IpNet::V4(a) = a {
                let _ = writeln!(
                    w,
                    "-A POSTROUTING -s {} ! -o {} -j MASQUERADE",
                    a.trunc(),
                    b.name
                );
            }
        }
    }
    for (ip, _, p) in &published {
        let proto = p.proto.name();
        let _ = writeln!(
            w,
            "-A POSTROUTING -s {ip}/32 -d {ip}/32 -p {proto} -m {proto} --dport {} -j MASQUERADE",
            p.container_port
        );
    }
    for (ip, _, p) in &published {
        let proto = p.proto.name();
        // Hairpin mode: no `! -i B`, and no `-i B -j RETURN` before it.
        let dst = p.host_ip.map(|h| format!(" -d {h}/32")).unwrap_or_default();
        let _ = writeln!(
            w,
            "-A DOCKER{dst} -p {proto} -m {proto} --dport {} -j DNAT --to-destination {ip}:{}",
            p.host_port, p.container_port
        );
    }
    let _ = writeln!(w, "COMMIT");
    f
}

/// Where a line of merged text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The generated rules.
    Generated,
    /// The topology's `rules` text, at this line (from 1).
    User(usize),
}

/// Generated rules with the topology's own merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub text: String,
    /// Where each line of `text` came from, by line (index 0 = line 1).
    pub origin: Vec<Origin>,
}

/// Where a problem in merged text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// In the topology's `rules`: its line, and the problem.
    User(usize, String),
    /// In a generated line: the line, and the problem.
    Generated(String, String),
    /// Not on a line (a problem of the ruleset as a whole).
    Nowhere(String),
}

impl Merged {
    /// Places an error `crate::rules::parse::parse` found in `text`.
    pub fn locate(&self, e: &RuleError) -> Located {
        match e {
            RuleError::Line { line, error } => match self.origin.get(line.wrapping_sub(1)) {
                Some(Origin::User(n)) => Located::User(*n, error.to_string()),
                Some(Origin::Generated) => Located::Generated(
                    self.text
                        .lines()
                        .nth(line - 1)
                        .unwrap_or_default()
                        .to_string(),
                    error.to_string(),
                ),
                // Past the end: "COMMIT expected" and the like.
                None => Located::Nowhere(error.to_string()),
            },
            e => Located::Nowhere(e.to_string()),
        }
    }
}

type Line = (String, Origin);

/// One `*table` … `COMMIT` section, split into chain lines and the rest.
struct Section {
    table: String,
    head: Origin,
    decls: Vec<(String, Line)>,
    rules: Vec<Line>,
}

/// The sections of iptables-save text, or `None` when it is not made of
/// sections (the parser then says what is wrong with it). A later section
/// for a table replaces an earlier one, as with iptables-restore.
fn sections(text: &str, origin: impl Fn(usize) -> Origin) -> Option<Vec<Section>> {
    let mut out: Vec<Section> = Vec::new();
    let mut cur: Option<Section> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim_start().is_empty() || line.starts_with('#') {
            continue;
        }
        let o = origin(i + 1);
        if let Some(t) = line.strip_prefix('*') {
            if cur.is_some() {
                return None;
            }
            cur = Some(Section {
                table: t.trim().to_string(),
                head: o,
                decls: Vec::new(),
                rules: Vec::new(),
            });
            continue;
        }
        let sec = cur.as_mut()?;
        if line == "COMMIT" {
            let s = cur.take()?;
            out.retain(|x| x.table != s.table);
            out.push(s);
        } else if let Some(rest) = line.strip_prefix(':') {
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            sec.decls.push((name, (line.to_string(), o)));
        } else {
            sec.rules.push((line.to_string(), o));
        }
    }
    if cur.is_some() {
        return None;
    }
    Some(out)
}

/// `generated` with `user` after it, table by table: the user's chains are
/// added, a policy the user gives replaces the generated one, the user's
/// rules are appended to their chains (in DOCKER-USER, before Docker's
/// final RETURN), and tables only the user has follow. Text that is not
/// made of sections is put after the generated text as it is, for the
/// parser to say where it goes wrong.
pub fn merge(generated: &str, user: &str) -> Merged {
    let gen_secs =
        sections(generated, |_| Origin::Generated).expect("generated rules are sections");
    let Some(mut user_secs) = sections(user, Origin::User) else {
        let mut origin = vec![Origin::Generated; generated.lines().count()];
        origin.extend((1..=user.lines().count()).map(Origin::User));
        let mut text = generated.to_string();
        text.push_str(user);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return Merged { text, origin };
    };
    let mut merged: Vec<Section> = Vec::new();
    for mut g in gen_secs {
        if let Some(i) = user_secs.iter().position(|u| u.table == g.table) {
            let u = user_secs.remove(i);
            for (name, line) in u.decls {
                let policy = line.0.split_whitespace().nth(1).unwrap_or("-");
                match g.decls.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, existing)) if policy != "-" => *existing = line,
                    Some(_) => {}
                    None => g.decls.push((name, line)),
                }
            }
            let (tail, mut rules): (Vec<Line>, Vec<Line>) = g
                .rules
                .into_iter()
                .partition(|(l, _)| l == DOCKER_USER_RETURN);
            rules.extend(u.rules);
            rules.extend(tail);
            g.rules = rules;
        }
        merged.push(g);
    }
    merged.extend(user_secs);
    let mut text = String::new();
    let mut origin = Vec::new();
    let mut push = |l: &str, o: Origin| {
        text.push_str(l);
        text.push('\n');
        origin.push(o);
    };
    for s in merged {
        push(&format!("*{}", s.table), s.head);
        for (_, (l, o)) in &s.decls {
            push(l, *o);
        }
        for (l, o) in &s.rules {
            push(l, *o);
        }
        push("COMMIT", s.head);
    }
    Merged { text, origin }
}

/// The rules an apply installs: with `docker_rules`, Docker's merged with
/// the file's; otherwise the file's (`None`: leave the live rules alone).
pub fn effective_rules(t: &Topology) -> Option<String> {
    if t.docker_rules {
        Some(merge(&rules(t), t.rules.as_deref().unwrap_or("")).text)
    } else {
        t.rules.clone()
    }
}
