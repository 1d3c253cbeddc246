//! Test support: rulesets written in `iptables-save` style and packets
//! built field by field, so the semantic tests read like the rules they
//! check. The real parser lives elsewhere and may change; this one only
//! knows what the tests use, and numbers slots by line so expected
//! counters can be read off the text.

use std::net::Ipv4Addr;

use crate::rules::compile::{Simulator, compile};
use crate::rules::eval::{Outcome, Verdict, evaluate};
use crate::rules::model::{
    Chain, Hook, IcmpType, Iface, Matches, Multiport, MultiportKind, Nat, Neg, PacketView, Policy,
    PortRange, RejectWith, Rule, Ruleset, Table, TableRules, Target, ctstate, proto,
};

/// The interfaces the tests' host has.
pub const IFACES: [(&str, u32); 6] = [
    ("eth0", 2),
    ("eth1", 3),
    ("veth1a", 10),
    ("veth1b", 11),
    ("veth2", 12),
    ("br0", 20),
];

pub fn ifaces() -> Vec<(String, u32)> {
    IFACES.iter().map(|(n, i)| (n.to_string(), *i)).collect()
}

/// Interfaces the compiler was not told of get an ifindex it has no class
/// for.
pub fn ifindex_of(name: &str) -> u32 {
    IFACES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(999, |(_, i)| *i)
}

/// Parses `*table`, `:CHAIN POLICY` (`-` for user chains) and `-A CHAIN
/// ...` lines. The slot of a rule or policy is its line number (1-based,
/// counting every non-blank line).
pub fn ruleset(text: &str) -> Ruleset {
    let mut tables: Vec<TableRules> = Vec::new();
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    for (n, line) in lines.enumerate() {
        let slot = n as u32 + 1;
        if let Some(name) = line.strip_prefix('*') {
            let table = *Table::ALL
                .iter()
                .find(|t| t.name() == name)
                .unwrap_or_else(|| panic!("table {name}"));
            let chains = table
                .hooks()
                .iter()
                .map(|h| Chain {
                    name: h.chain_name().to_owned(),
                    policy: Some(Policy::Accept),
                    policy_slot: 0,
                    rules: Vec::new(),
                })
                .collect();
            tables.push(TableRules { table, chains });
            continue;
        }
        let tr = tables.last_mut().expect("a *table line first");
        if let Some(decl) = line.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            let (name, policy) = (it.next().unwrap(), it.next().unwrap());
            let policy = match policy {
                "ACCEPT" => Some(Policy::Accept),
                "DROP" => Some(Policy::Drop),
                _ => None,
            };
            match tr.chains.iter_mut().find(|c| c.name == name) {
                Some(c) => {
                    c.policy = policy;
                    c.policy_slot = slot;
                }
                None => tr.chains.push(Chain {
                    name: name.to_owned(),
                    policy,
                    policy_slot: slot,
                    rules: Vec::new(),
                }),
            }
            continue;
        }
        let toks = tokens(line);
        assert_eq!(toks[0], "-A", "{line}");
        let (matches, target) = rule(&toks[2..]);
        let chain = tr
            .chains
            .iter_mut()
            .find(|c| c.name == toks[1])
            .unwrap_or_else(|| panic!("chain {} not declared", toks[1]));
        chain.rules.push(Rule {
            matches,
            target,
            slot,
        });
    }
    Ruleset { tables }
}

fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() || quoted {
        out.push(cur);
    }
    out
}

fn rule(toks: &[String]) -> (Matches, Target) {
    let mut m = Matches::default();
    let mut target = Target::None;
    let mut negate = false;
    let mut i = 0;
    let next = |i: &mut usize| {
        *i += 1;
        toks[*i].clone()
    };
    while i < toks.len() {
        let t = toks[i].as_str();
        if t == "!" {
            negate = true;
            i += 1;
            continue;
        }
        let negated = std::mem::take(&mut negate);
        match t {
            "-i" => m.in_iface = Some(n(negated, iface(&next(&mut i)))),
            "-o" => m.out_iface = Some(n(negated, iface(&next(&mut i)))),
            "-s" => m.src = Some(n(negated, net(&next(&mut i)))),
            "-d" => m.dst = Some(n(negated, net(&next(&mut i)))),
            "-p" => m.proto = Some(n(negated, protocol(&next(&mut i)))),
            "--sport" => m.sport = Some(n(negated, ports(&next(&mut i)))),
            "--dport" => m.dport = Some(n(negated, ports(&next(&mut i)))),
            "-m" => {
                next(&mut i);
            }
            "--sports" | "--dports" | "--ports" => {
                let kind = match t {
                    "--sports" => MultiportKind::Source,
                    "--dports" => MultiportKind::Destination,
                    _ => MultiportKind::Either,
                };
                let ports = next(&mut i).split(',').map(ports).collect();
                m.multiport = Some(n(negated, Multiport { kind, ports }));
            }
            "--icmp-type" => m.icmp = Some(n(negated, icmp(&next(&mut i)))),
            "--ctstate" => m.ctstate = Some(n(negated, states(&next(&mut i)))),
            "-j" | "-g" => {
                let name = next(&mut i);
                target = match (t, name.as_str()) {
                    ("-g", _) => Target::Goto(name),
                    (_, "ACCEPT") => Target::Accept,
                    (_, "DROP") => Target::Drop,
                    (_, "RETURN") => Target::Return,
                    (_, "REJECT") => Target::Reject(RejectWith::default()),
                    (_, "LOG") => Target::Log {
                        prefix: String::new(),
                    },
                    (_, "MASQUERADE") => Target::Nat(Nat::Masquerade(None)),
                    (_, "REDIRECT") => Target::Nat(Nat::Redirect(None)),
                    _ => Target::Jump(name),
                };
            }
            // Through the real parser: the tests write what iptables takes.
            "--to-source" | "--to-destination" => {
                let r = crate::rules::parse::parse_nat_to(&next(&mut i), true).unwrap();
                target = Target::Nat(if t == "--to-source" {
                    Nat::Snat(r)
                } else {
                    Nat::Dnat(r)
                });
            }
            "--to-ports" => {
                let p = Some(crate::rules::parse::parse_nat_ports(&next(&mut i), true).unwrap());
                target = Target::Nat(match target {
                    Target::Nat(Nat::Masquerade(_)) => Nat::Masquerade(p),
                    _ => Nat::Redirect(p),
                });
            }
            "--log-prefix" => {
                target = Target::Log {
                    prefix: next(&mut i),
                }
            }
            "--reject-with" => {
                let w = next(&mut i);
                let with = [
                    RejectWith::IcmpPortUnreachable,
                    RejectWith::IcmpNetUnreachable,
                    RejectWith::IcmpHostUnreachable,
                    RejectWith::IcmpAdminProhibited,
                    RejectWith::TcpReset,
                ]
                .into_iter()
                .find(|r| r.name() == w)
                .unwrap_or_else(|| panic!("reject-with {w}"));
                target = Target::Reject(with);
            }
            other => panic!("unknown token {other}"),
        }
        i += 1;
    }
    (m, target)
}

fn n<T>(negated: bool, value: T) -> Neg<T> {
    Neg { negated, value }
}

fn iface(s: &str) -> Iface {
    match s.strip_suffix('+') {
        Some(name) => Iface {
            name: name.to_owned(),
            wildcard: true,
        },
        None => Iface {
            name: s.to_owned(),
            wildcard: false,
        },
    }
}

fn net(s: &str) -> ipnet::Ipv4Net {
    if s.contains('/') {
        s.parse().unwrap()
    } else {
        ipnet::Ipv4Net::new(s.parse().unwrap(), 32).unwrap()
    }
}

fn protocol(s: &str) -> u8 {
    match s {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "icmp" => proto::ICMP,
        "all" => 0,
        n => n.parse().unwrap(),
    }
}

fn ports(s: &str) -> PortRange {
    match s.split_once(':') {
        Some((lo, hi)) => PortRange {
            lo: lo.parse().unwrap(),
            hi: hi.parse().unwrap(),
        },
        None => {
            let p = s.parse().unwrap();
            PortRange { lo: p, hi: p }
        }
    }
}

fn icmp(s: &str) -> IcmpType {
    if s == "any" {
        return IcmpType {
            typ: 0xff,
            code_lo: 0,
            code_hi: 0xff,
        };
    }
    match s.split_once('/') {
        Some((t, c)) => {
            let c = c.parse().unwrap();
            IcmpType {
                typ: t.parse().unwrap(),
                code_lo: c,
                code_hi: c,
            }
        }
        None => IcmpType {
            typ: s.parse().unwrap(),
            code_lo: 0,
            code_hi: 0xff,
        },
    }
}

fn states(s: &str) -> u8 {
    s.split(',')
        .map(|st| match st {
            "INVALID" => ctstate::INVALID,
            "NEW" => ctstate::NEW,
            "ESTABLISHED" => ctstate::ESTABLISHED,
            "RELATED" => ctstate::RELATED,
            "UNTRACKED" => ctstate::UNTRACKED,
            _ => panic!("state {st}"),
        })
        .fold(0, |a, b| a | b)
}

/// A packet built up field by field.
#[derive(Clone, Debug)]
pub struct Pkt(pub PacketView);

impl Pkt {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::ports(proto::TCP, src, sport, dst, dport)
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::ports(proto::UDP, src, sport, dst, dport)
    }

    fn ports(p: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        let mut v = crate::rules::eval::packet(ip(src), ip(dst));
        v.proto = p;
        v.sport = sport;
        v.dport = dport;
        Pkt(v)
    }

    pub fn icmp(src: &str, dst: &str, typ: u8, code: u8) -> Pkt {
        let mut v = crate::rules::eval::packet(ip(src), ip(dst));
        v.proto = proto::ICMP;
        (v.sport, v.dport) = (0, 0);
        (v.icmp_type, v.icmp_code) = (typ, code);
        Pkt(v)
    }

    pub fn i(mut self, name: &str) -> Pkt {
        self.0.in_iface = Some(name.to_owned());
        self
    }

    pub fn o(mut self, name: &str) -> Pkt {
        self.0.out_iface = Some(name.to_owned());
        self
    }

    pub fn state(mut self, st: u8) -> Pkt {
        self.0.ctstate = st;
        self
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// What a test expects: the verdict, the slots (line numbers) counted in
/// order, the LOG prefixes.
pub fn outcome(verdict: Verdict, counted: &[u32], logs: &[&str]) -> Outcome {
    Outcome {
        verdict,
        counted: counted.to_vec(),
        logs: logs.iter().map(|s| s.to_string()).collect(),
        nat: None,
    }
}

/// `outcome`, with the NAT target the nat table's walk ended in.
pub fn outcome_nat(verdict: Verdict, counted: &[u32], logs: &[&str], nat: Nat) -> Outcome {
    Outcome {
        nat: Some(nat),
        ..outcome(verdict, counted, logs)
    }
}

/// Checks the reference interpreter against `want`, and the compiled maps
/// against the interpreter, in both generations.
#[track_caller]
pub fn check(rs: &Ruleset, hook: Hook, pkt: &Pkt, first: bool, want: &Outcome) {
    let got = evaluate(rs, hook, &pkt.0, first);
    assert_eq!(&got, want, "evaluate at {hook:?} of {:?}", pkt.0);
    let c = compile(rs, &ifaces()).expect("compiles");
    for generation in [0, 1] {
        let img = c.image(generation);
        let sim = Simulator::new(&img).run(hook, &pkt.0, first, ifindex_of);
        assert_eq!(
            &sim, want,
            "simulate (gen {generation}) at {hook:?} of {:?}",
            pkt.0
        );
    }
}
