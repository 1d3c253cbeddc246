//! `iptables -L [-v] [-n] [-x] [--line-numbers] [CHAIN]` for netctl's
//! ruleset, column for column as iptables-nft 1.8.9 prints it, because that
//! table (with its counters) is what operators read and what their scripts
//! scrape. Counters live in the datapath, so the caller passes a lookup from
//! counter slot to counters.
//!
//! One deliberate difference: without `-n` iptables turns addresses into
//! host names (DNS, `/etc/hosts`) and, failing that, network names
//! (`/etc/networks`); netctl never looks up host names, so listing never
//! waits on a resolver and `127.0.0.1` stays `127.0.0.1` where iptables says
//! `localhost`. Network names (`loopback/8`), protocol and port names do
//! follow iptables, from the copy of netbase's files in `netdb`.

use std::fmt::Write;

use super::model::{
    Chain, Counters, IcmpType, Iface, MultiportKind, Nat, Neg, Policy, PortRange, Rule, Ruleset,
    Table, TableRules, Target, proto,
};
use super::netdb;
use super::parse::{ICMP_NAMES, RuleError, canonical_ports, protocol_name};
use super::save::{ctstate_names, nat_ports, nat_range, ordered_chains};

/// The options of `iptables -L` netctl has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `-v`: counters, interfaces.
    pub verbose: bool,
    /// `-n`: numbers instead of names.
    pub numeric: bool,
    /// `-x`: exact counters instead of K/M/G/T.
    pub exact: bool,
    /// `--line-numbers`.
    pub line_numbers: bool,
}

/// The listing of `table` (or of one chain of it), as `iptables -t TABLE -L`.
pub fn list(
    rs: &Ruleset,
    table: Table,
    chain: Option<&str>,
    opts: &ListOptions,
    counters: &dyn Fn(u32) -> Counters,
) -> Result<String, RuleError> {
    let fresh = TableRules::new(table);
    let tr = rs.table(table).unwrap_or(&fresh);
    let chains: Vec<&Chain> = match chain {
        Some(name) => vec![
            tr.chain(name)
                .ok_or_else(|| RuleError::msg("No chain/target/match by that name."))?,
        ],
        None => ordered_chains(tr),
    };
    let count = |slot: u32| {
        if slot == 0 {
            Counters::default()
        } else {
            counters(slot)
        }
    };
    let mut out = String::new();
    for (i, c) in chains.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        header(&mut out, tr, c, opts, count(c.policy_slot));
        for (n, r) in c.rules.iter().enumerate() {
            rule_line(&mut out, r, n + 1, opts, count(r.slot));
        }
    }
    Ok(out)
}

/// `xtables_print_num`: padded to a column, or bare (`FMT_NOTABLE`) for the
/// chain header. The rounding wraps around like the C does (a counter near
/// 2^64 prints as `0K`).
fn num(out: &mut String, n: u64, opts: &ListOptions, bare: bool) {
    if opts.exact {
        let _ = if bare {
            write!(out, "{n} ")
        } else {
            write!(out, "{n:>8} ")
        };
        return;
    }
    if n <= 99999 {
        let _ = if bare {
            write!(out, "{n} ")
        } else {
            write!(out, "{n:>5} ")
        };
        return;
    }
    let mut n = n;
    for unit in ['K', 'M', 'G'] {
        n = n.wrapping_add(500) / 1000;
        if n <= 9999 {
            let _ = if bare {
                write!(out, "{n}{unit} ")
            } else {
                write!(out, "{n:>4}{unit} ")
            };
            return;
        }
    }
    n = n.wrapping_add(500) / 1000;
    let _ = if bare {
        write!(out, "{n}T ")
    } else {
        write!(out, "{n:>4}T ")
    };
}

fn header(out: &mut String, tr: &TableRules, c: &Chain, opts: &ListOptions, pc: Counters) {
    let _ = write!(out, "Chain {}", c.name);
    match c.policy {
        Some(p) => {
            let name = match p {
                Policy::Accept => "ACCEPT",
                Policy::Drop => "DROP",
            };
            let _ = write!(out, " (policy {name}");
            if opts.verbose {
                out.push(' ');
                num(out, pc.packets, opts, true);
                out.push_str("packets, ");
                num(out, pc.bytes, opts, true);
                out.push_str("bytes");
            }
            out.push_str(")\n");
        }
        None => {
            let _ = writeln!(out, " ({} references)", tr.references(&c.name));
        }
    }
    if opts.line_numbers {
        let _ = write!(out, "{:<4} ", "num");
    }
    if opts.verbose {
        let _ = if opts.exact {
            write!(out, "{:>8} {:>10} ", "pkts", "bytes")
        } else {
            write!(out, "{:>5} {:>5} ", "pkts", "bytes")
        };
    }
    let _ = write!(out, "{:<9} ", "target");
    out.push_str(" prot opt");
    if opts.verbose {
        let _ = write!(out, " {:<6} {:<6} ", "in", "out");
    }
    let _ = writeln!(out, " {:<19}  {:<19} ", "source", "destination");
}

fn rule_line(out: &mut String, r: &Rule, n: usize, opts: &ListOptions, rc: Counters) {
    if opts.line_numbers {
        let _ = write!(out, "{n:<4} ");
    }
    if opts.verbose {
        num(out, rc.packets, opts, false);
        num(out, rc.bytes, opts, false);
    }
    let target = match &r.target {
        Target::None => "",
        Target::Accept => "ACCEPT",
        Target::Drop => "DROP",
        Target::Reject(_) => "REJECT",
        Target::Return => "RETURN",
        Target::Log { .. } => "LOG",
        Target::Jump(c) | Target::Goto(c) => c,
        Target::Nat(nat) => nat.name(),
    };
    let _ = write!(out, "{target:<9} ");
    let m = &r.matches;
    let (p, pneg) = match &m.proto {
        Some(p) => (p.value, p.negated),
        None => (0, false),
    };
    out.push(if pneg { '!' } else { ' ' });
    match protocol_name(p).filter(|_| !opts.numeric) {
        Some(name) => {
            let _ = write!(out, "{name:<4} ");
        }
        None => {
            let _ = write!(out, "{p:<4} ");
        }
    }
    out.push_str("-- ");
    if opts.verbose {
        let any = if opts.numeric { "*" } else { "any" };
        let _ = write!(out, " {:<6} ", iface(&m.in_iface, any));
        let _ = write!(out, "{:<6} ", iface(&m.out_iface, any));
    }
    for net in [&m.src, &m.dst] {
        let (neg, text) = match net {
            Some(n) => (n.negated, address(n.value, opts)),
            None => (false, address(ipnet::Ipv4Net::default(), opts)),
        };
        out.push(if neg { '!' } else { ' ' });
        let _ = write!(out, "{text:<19} ");
    }
    if matches!(r.target, Target::Goto(_)) {
        out.push_str("[goto] ");
    }
    matches_print(out, r, p, opts.numeric);
    match &r.target {
        Target::Reject(with) => {
            let _ = write!(out, " reject-with {}", with.name());
        }
        Target::Log { prefix } => {
            out.push_str(if opts.numeric {
                " LOG flags 0 level 4"
            } else {
                " LOG level warn"
            });
            if !prefix.is_empty() {
                let _ = write!(out, " prefix \"{prefix}\"");
            }
        }
        // libxt_NAT's print: the same ranges as save, other words.
        Target::Nat(Nat::Snat(r) | Nat::Dnat(r)) => {
            let _ = write!(out, " to:{}", nat_range(r));
        }
        Target::Nat(Nat::Masquerade(Some(p))) => {
            let _ = write!(out, " masq ports: {}", nat_ports(p));
        }
        Target::Nat(Nat::Redirect(Some(p))) => {
            let _ = write!(out, " redir ports {}", nat_ports(p));
        }
        _ => {}
    }
    out.push('\n');
}

fn iface(i: &Option<Neg<Iface>>, any: &str) -> String {
    match i {
        None => any.to_string(),
        Some(i) => format!(
            "{}{}{}",
            if i.negated { "!" } else { "" },
            i.value.name,
            if i.value.wildcard { "+" } else { "" }
        ),
    }
}

fn address(n: ipnet::Ipv4Net, opts: &ListOptions) -> String {
    if n.prefix_len() == 0 && !opts.numeric {
        return "anywhere".into();
    }
    let name = match netdb::network_name(n.addr()).filter(|_| !opts.numeric) {
        Some(name) => name.to_string(),
        None => n.addr().to_string(),
    };
    if n.prefix_len() == 32 {
        name
    } else {
        format!("{name}/{}", n.prefix_len())
    }
}

/// The protocol match, multiport and conntrack, in the order `save` writes
/// them (iptables prints matches in rule order).
fn matches_print(out: &mut String, r: &Rule, p: u8, numeric: bool) {
    let m = &r.matches;
    let sport = m.sport.clone().and_then(canonical_ports);
    let dport = m.dport.clone().and_then(canonical_ports);
    let shown = |x: &Option<Neg<PortRange>>| {
        x.as_ref()
            .is_some_and(|x| x.negated || x.value.lo != 0 || x.value.hi != u16::MAX)
    };
    if shown(&sport) || shown(&dport) {
        out.push_str(if p == proto::UDP { " udp" } else { " tcp" });
        for (name, ports) in [("spt", &sport), ("dpt", &dport)] {
            let Some(x) = ports.as_ref().filter(|_| shown(ports)) else {
                continue;
            };
            let inv = if x.negated { "!" } else { "" };
            let _ = if x.value.lo == x.value.hi {
                write!(out, " {name}:{inv}{}", port(x.value.lo, p, numeric))
            } else {
                write!(
                    out,
                    " {name}s:{inv}{}:{}",
                    port(x.value.lo, p, numeric),
                    port(x.value.hi, p, numeric)
                )
            };
        }
    }
    if let Some(i) = &m.icmp {
        out.push_str(" icmp");
        icmp_print(out, i.value, i.negated, numeric);
    }
    if let Some(mp) = &m.multiport {
        let kind = match mp.value.kind {
            MultiportKind::Source => "sports",
            MultiportKind::Destination => "dports",
            MultiportKind::Either => "ports",
        };
        let _ = write!(out, " multiport {kind} ");
        if mp.negated {
            out.push_str(" !");
        }
        let list: Vec<String> = mp
            .value
            .ports
            .iter()
            .map(|r| {
                if r.lo == r.hi {
                    port(r.lo, p, numeric)
                } else {
                    format!("{}:{}", port(r.lo, p, numeric), port(r.hi, p, numeric))
                }
            })
            .collect();
        out.push_str(&list.join(","));
    }
    if let Some(c) = &m.ctstate {
        if c.negated {
            out.push_str(" !");
        }
        let _ = write!(out, " ctstate {}", ctstate_names(c.value));
    }
}

fn port(n: u16, p: u8, numeric: bool) -> String {
    match netdb::service_name(n, p).filter(|_| !numeric) {
        Some(name) => name.to_string(),
        None => n.to_string(),
    }
}

/// libipt_icmp's `print_icmptype`, spacing quirks included (`icmptype 8`).
fn icmp_print(out: &mut String, t: IcmpType, inv: bool, numeric: bool) {
    let named = ICMP_NAMES
        .iter()
        .find(|(_, typ, lo, hi)| *typ == t.typ && *lo == t.code_lo && *hi == t.code_hi)
        .filter(|_| !numeric);
    if let Some((name, ..)) = named {
        let _ = write!(out, " {}{name}", if inv { "!" } else { "" });
        return;
    }
    if inv {
        out.push_str(" !");
    }
    let _ = write!(out, "type {}", t.typ);
    if t.code_lo == t.code_hi {
        let _ = write!(out, " code {}", t.code_lo);
    } else if t.code_lo != 0 || t.code_hi != 0xFF {
        let _ = write!(out, " codes {}-{}", t.code_lo, t.code_hi);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rules::parse::{CounterRef, parse_text, table_by_name};

    /// The `iptables-save -c` fixture as a ruleset with slots, and the
    /// counters by slot, as the datapath would hold them.
    fn load(name: &str) -> (Ruleset, HashMap<u32, Counters>) {
        let text = match name {
            "docker" => include_str!("testdata/docker.save-c"),
            "features" => include_str!("testdata/features.save-c"),
            "alltables" => include_str!("testdata/alltables.save-c"),
            "counters" => include_str!("testdata/counters.save-c"),
            "nat" => include_str!("testdata/nat.save-c"),
            _ => panic!("no fixture {name}"),
        };
        let mut p = parse_text(text).unwrap();
        p.validate().unwrap();
        p.ruleset.assign_slots().unwrap();
        let mut by_slot = HashMap::new();
        for (r, c) in &p.counters {
            let slot = match r {
                CounterRef::Policy { table, chain } => {
                    p.ruleset.chain(*table, chain).unwrap().policy_slot
                }
                CounterRef::Rule {
                    table,
                    chain,
                    index,
                } => p.ruleset.chain(*table, chain).unwrap().rules[*index].slot,
            };
            by_slot.insert(slot, *c);
        }
        (p.ruleset, by_slot)
    }

    /// Every `iptables -L` output captured by testdata/make.sh, compared
    /// byte for byte.
    #[test]
    fn matches_real_iptables_listings() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/rules/testdata/list");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 60, "fixtures missing from {dir}");
        for path in files {
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let want = std::fs::read_to_string(&path).unwrap();
            let stem = file.strip_suffix(".txt").unwrap();
            let mut parts = stem.splitn(3, '.');
            let (name, table, flags) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let (flags, chain) = match flags.split_once('-') {
                Some((f, c)) if c != "-line-numbers" => (f, Some(c)),
                _ => (flags, None),
            };
            let (short, line_numbers) = match flags.strip_suffix("--line-numbers") {
                Some(f) => (f, true),
                None => (flags, false),
            };
            let opts = ListOptions {
                verbose: short.contains('v'),
                numeric: short.contains('n'),
                exact: short.contains('x'),
                line_numbers,
            };
            let (rs, ctrs) = load(name);
            let got = list(&rs, table_by_name(table).unwrap(), chain, &opts, &|s| {
                ctrs.get(&s).copied().unwrap_or_default()
            })
            .unwrap();
            if got != want {
                for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
                    if g != w {
                        panic!("{file} line {}:\n got: {g:?}\nwant: {w:?}", i + 1);
                    }
                }
                panic!(
                    "{file}: {} lines, want {}",
                    got.lines().count(),
                    want.lines().count()
                );
            }
        }
    }

    /// Random rulesets with random counters, restored with `-c` into the
    /// real iptables-nft in a throwaway namespace, listed both ways.
    /// Needs root (`cargo xtask test` runs as root).
    #[test]
    fn real_iptables_lists_random_rulesets_the_same() {
        use crate::rules::save::{SaveOptions, save_with, tests::Gen};
        use std::io::Write as _;
        let flags = ["-L", "-vL", "-nL", "-vnL", "-vnxL", "-vL --line-numbers"];
        let mut g = Gen(0xC0FF_EE00_1234_5678);
        for n in 0..60 {
            let mut rs = g.ruleset();
            rs.assign_slots().unwrap();
            let mut ctrs = HashMap::new();
            for s in rs.slots() {
                let scale = [1u64, 1000, 1_000_000, 1 << 40, u64::MAX / 3][(g.next() % 5) as usize];
                let p = g.next() % scale.max(1);
                let b = g.next() % scale.max(1);
                ctrs.insert(
                    s,
                    Counters {
                        packets: p,
                        bytes: b,
                    },
                );
            }
            let lookup = |s: u32| ctrs.get(&s).copied().unwrap_or_default();
            let text = save_with(
                &rs,
                &SaveOptions {
                    counters: Some(&lookup),
                    rule_counters: true,
                    table: None,
                },
            );
            let mut script = String::from("iptables-restore -c\n");
            let tables: Vec<Table> = crate::rules::save::SAVE_ORDER
                .into_iter()
                .filter(|t| text.contains(&format!("*{}\n", t.name())))
                .collect();
            for t in &tables {
                for f in flags {
                    script += &format!("echo '@@@'; iptables -t {} {f}\n", t.name());
                }
            }
            let mut child = std::process::Command::new("unshare")
                .args(["--net", "sh", "-ec", &script])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // iptables-restore reads up to the end of its input: close it.
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(text.as_bytes()).unwrap();
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "#{n}");
            let out = String::from_utf8(out.stdout).unwrap();
            let mut real = out.split("@@@\n").skip(1);
            for t in &tables {
                for f in flags {
                    let want = real.next().unwrap();
                    let short = f.split(' ').next().unwrap_or("");
                    let opts = ListOptions {
                        verbose: short.contains('v'),
                        numeric: short.contains('n'),
                        exact: short.contains('x'),
                        line_numbers: f.contains("--line-numbers"),
                    };
                    let got = list(&rs, *t, None, &opts, &lookup).unwrap();
                    assert_eq!(got, want, "#{n} iptables -t {} {f}", t.name());
                }
            }
        }
    }

    /// The nat tables of random rulesets (NAT targets in all their forms),
    /// with random counters, restored into iptables-legacy in a throwaway
    /// namespace and listed both ways. Needs root (`cargo xtask test` runs
    /// as root).
    #[test]
    fn real_iptables_legacy_lists_nat_the_same() {
        use crate::rules::save::{
            SaveOptions, save_with,
            tests::{Gen, in_namespace, legacy_ruleset},
        };
        let flags = ["-L", "-vL", "-nL", "-vnL", "-vnxL", "-vL --line-numbers"];
        let mut script = String::from("iptables-legacy-restore -c\n");
        for f in flags {
            script += &format!("echo '@@@'; iptables-legacy -t nat {f}\n");
        }
        let mut g = Gen(0x0DDB_A115_EED0_0001);
        let mut nat_rules = 0;
        for n in 0..40 {
            let mut rs = legacy_ruleset(&mut g);
            rs.assign_slots().unwrap();
            let mut ctrs = HashMap::new();
            for s in rs.slots() {
                let scale = [1u64, 1000, 1_000_000, 1 << 40][(g.next() % 4) as usize];
                let (p, b) = (g.next() % scale, g.next() % scale);
                ctrs.insert(
                    s,
                    Counters {
                        packets: p,
                        bytes: b,
                    },
                );
            }
            let lookup = |s: u32| ctrs.get(&s).copied().unwrap_or_default();
            let text = save_with(
                &rs,
                &SaveOptions {
                    counters: Some(&lookup),
                    rule_counters: true,
                    table: Some(Table::Nat),
                },
            );
            nat_rules += text.matches("-j SNAT").count() + text.matches("-j DNAT").count();
            let out = in_namespace(&script, &text).unwrap_or_else(|e| panic!("#{n}: {e}"));
            let mut real = out.split("@@@\n").skip(1);
            for f in flags {
                let want = real.next().unwrap();
                let short = f.split(' ').next().unwrap_or("");
                let opts = ListOptions {
                    verbose: short.contains('v'),
                    numeric: short.contains('n'),
                    exact: short.contains('x'),
                    line_numbers: f.contains("--line-numbers"),
                };
                let got = list(&rs, Table::Nat, None, &opts, &lookup).unwrap();
                assert_eq!(got, want, "#{n} iptables-legacy -t nat {f}");
            }
        }
        assert!(nat_rules > 20, "{nat_rules}");
    }

    #[test]
    fn units() {
        let s = |n: u64, exact: bool| {
            let mut out = String::new();
            num(
                &mut out,
                n,
                &ListOptions {
                    exact,
                    ..Default::default()
                },
                false,
            );
            out
        };
        assert_eq!(s(99999, false), "99999 ");
        assert_eq!(s(100000, false), " 100K ");
        assert_eq!(s(9999499, false), "9999K ");
        assert_eq!(s(9999500, false), "  10M ");
        assert_eq!(s(u64::MAX, false), "   0K ");
        assert_eq!(s(u64::MAX / 2, false), "9223372T ");
        assert_eq!(s(9_999_500_000_000, false), "  10T ");
        assert_eq!(s(123, true), "     123 ");
    }

    #[test]
    fn unknown_chain() {
        let rs = Ruleset::new();
        let e = list(
            &rs,
            Table::Filter,
            Some("nochain"),
            &ListOptions::default(),
            &|_| Counters::default(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "No chain/target/match by that name."
        );
        // A table the ruleset lacks lists as a fresh one.
        let rs = Ruleset { tables: vec![] };
        let out = list(&rs, Table::Raw, None, &ListOptions::default(), &|_| {
            Counters::default()
        });
        assert!(
            out.unwrap()
                .starts_with("Chain PREROUTING (policy ACCEPT)\n")
        );
    }
}
