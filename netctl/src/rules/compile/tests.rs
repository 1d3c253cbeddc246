//! The compiler against the reference interpreter on random rulesets, the
//! map image's invariants, the refusals, and the cost at scale.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netctl_common::{
    RS_CLASS_WILD, RS_ENTRIES_MAX, RS_LOG_MAX, RS_NAT_MAX, RS_NO_SLOT, RS_SLOTS_MAX, entry, field,
    hook, nat_kind, nat_range,
};

use super::testkit::{self, Pkt, ifaces, ifindex_of, ruleset};
use super::*;
use crate::rules::eval::{Verdict, evaluate};
use crate::rules::r#gen::{self, GenConfig, Rng};
use crate::rules::model::{
    Chain, Matches, Nat, NatRange, Neg, Policy, PortRange, Rule, Ruleset, Table, TableRules,
    Target, proto,
};

/// Checks what the loader and the eBPF side rely on, beyond agreement on
/// packets: unique keys, a default class per field, words and summaries
/// that agree, forward SKIPs.
fn check_image(c: &Compiled, img: &MapImage) {
    let g = u32::from(img.generation);
    assert_eq!(img.hooks.len(), hook::COUNT as usize);
    let hdrs: HashMap<u32, _> = img.hooks.iter().copied().collect();
    for h in 0..u32::from(hook::COUNT) {
        assert!(hdrs.contains_key(&(g * 5 + h)), "hook header {h}");
    }

    let mut classes = HashSet::new();
    for (k, _) in &img.class {
        assert_eq!(k.generation, img.generation);
        let width = u32::from(field::WIDTH[k.field as usize]);
        let len = k.prefixlen - 32;
        assert!(len <= width, "prefix longer than the field");
        let v = u32::from_be_bytes(k.value);
        let host = if len == 32 { 0 } else { u32::MAX >> len };
        assert_eq!(v & host, 0, "bits beyond the prefix");
        assert!(
            classes.insert((k.prefixlen, k.hook, k.field, v)),
            "duplicate class key {k:?}"
        );
    }
    for (h, prog) in c.hooks.iter().enumerate() {
        if prog.entries.is_empty() {
            assert!(img.class.iter().all(|(k, _)| k.hook != h as u8));
            continue;
        }
        for f in 0..field::COUNT {
            assert!(
                classes.contains(&(32, h as u8, f, 0)),
                "hook {h} field {f}: no default class"
            );
        }
    }

    let words: HashMap<_, u64> = img.words.iter().copied().collect();
    assert_eq!(words.len(), img.words.len(), "duplicate word keys");
    assert!(img.words.iter().all(|(_, w)| *w != 0), "zero word");
    // Summaries are exactly the blocks that have words.
    let mut expect: HashMap<netctl_common::RsWordKey, [u64; netctl_common::RS_SUMMARY_WORDS]> =
        HashMap::new();
    for (k, _) in &img.words {
        let prog = &c.hooks[k.hook as usize];
        assert!(
            k.block * 64 < prog.entries.len() as u32,
            "word beyond the program"
        );
        let classes = prog.fields[k.field as usize].class_count();
        assert!(k.class == RS_CLASS_WILD || (k.class as usize) < classes);
        let sum = expect
            .entry(RsWordKeyExt::with_block(k, u32::MAX))
            .or_default();
        sum[(k.block / 64) as usize] |= 1 << (k.block % 64);
    }
    assert_eq!(
        expect.len(),
        img.summary.len(),
        "summaries without words, or duplicates"
    );
    for (k, s) in &img.summary {
        assert_eq!(expect.get(k), Some(&s.words), "summary {k:?}");
    }

    let mut indexes = HashSet::new();
    for (i, e) in &img.entries {
        assert!(indexes.insert(*i));
        let h = i / RS_ENTRIES_MAX - g * 5;
        let n = hdrs[&(g * 5 + h)].entries;
        let at = i % RS_ENTRIES_MAX;
        assert!(at < n);
        if e.kind == entry::SKIP {
            assert!(e.target > at && e.target <= n, "SKIP must go forward");
        }
        assert!(e.slot == RS_NO_SLOT || e.slot < RS_SLOTS_MAX);
        if e.kind == entry::LOG {
            assert!((e.log as usize) < c.logs.len());
        }
        if e.kind == entry::NAT {
            assert!((e.log as usize) < c.nat.len());
            let prog = &c.hooks[h as usize];
            assert!(prog.nat_start <= at && at < prog.nat_end, "NAT outside nat");
            assert_eq!(e.target, prog.nat_end, "NAT must end the nat block");
        }
    }
    assert_eq!(img.nat.len(), c.nat.len());
    for (k, (i, a)) in img.nat.iter().enumerate() {
        assert_eq!(*i, g * RS_NAT_MAX + k as u32);
        assert_eq!(*a, c.nat[k]);
        assert!(super::nat_of(a).is_some(), "{a:?}");
    }
    for (i, buf) in &img.logs {
        assert_eq!(i / RS_LOG_MAX, g);
        assert_eq!(*buf.last().unwrap(), 0, "LOG prefix not NUL-terminated");
    }
}

trait RsWordKeyExt {
    fn with_block(&self, block: u32) -> Self;
}

impl RsWordKeyExt for netctl_common::RsWordKey {
    fn with_block(&self, block: u32) -> Self {
        Self { block, ..*self }
    }
}

fn cfg_ifaces(cfg: &GenConfig) -> Vec<(String, u32)> {
    cfg.ifaces
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i as u32 + 2))
        .collect()
}

#[derive(Default, Debug)]
struct Coverage {
    rulesets: usize,
    refused: usize,
    packets: usize,
    verdicts: HashMap<String, usize>,
    logged: usize,
    max_counted: usize,
    max_entries: usize,
    /// Outcomes with a NAT target, by target.
    nat: HashMap<&'static str, usize>,
}

/// Random rulesets and packets: the compiled maps must give exactly the
/// reference's verdict, counters (in order) and logs.
fn differential(cfg: &GenConfig, seed: u64, rulesets: usize, packets: usize) -> Coverage {
    let mut rng = Rng::new(seed);
    let ifaces = cfg_ifaces(cfg);
    let ifindex = |name: &str| {
        ifaces
            .iter()
            .find(|(n, _)| n == name)
            .map_or(77, |(_, i)| *i)
    };
    let mut cov = Coverage::default();
    for case in 0..rulesets {
        let rs = r#gen::ruleset(&mut rng, cfg);
        let c = match compile(&rs, &ifaces) {
            Ok(c) => c,
            Err(e) if e.to_string().contains("datapath follows at most") => {
                cov.refused += 1;
                continue;
            }
            Err(e) => panic!("case {case}: {e}\n{rs:#?}"),
        };
        cov.rulesets += 1;
        cov.max_entries = cov
            .max_entries
            .max(c.hooks.iter().map(|h| h.entries.len()).max().unwrap());
        let img = c.image((case % 2) as u8);
        check_image(&c, &img);
        let sim = Simulator::new(&img);
        for _ in 0..packets {
            let hook = *rng.pick(&cfg.hooks);
            let first = rng.chance(50);
            let pkt = if rng.chance(50) {
                r#gen::packet(&mut rng, cfg)
            } else {
                r#gen::packet_at(&mut rng, cfg, hook)
            };
            let want = evaluate(&rs, hook, &pkt, first);
            let (got, nat_index) = sim.run_indexed(hook, &pkt, first, ifindex);
            assert_eq!(
                got, want,
                "case {case} (seed {seed}), {hook:?}, first {first}\npacket {pkt:?}\n{rs:#?}"
            );
            // The index is the compiled action the outcome names.
            assert_eq!(
                nat_index.map(|i| nat_of(&c.nat[i as usize])),
                want.nat.map(Some)
            );
            if let Some(n) = &want.nat {
                *cov.nat.entry(n.name()).or_default() += 1;
            }
            cov.packets += 1;
            *cov.verdicts
                .entry(format!("{:?}", want.verdict))
                .or_default() += 1;
            cov.logged += usize::from(!want.logs.is_empty());
            cov.max_counted = cov.max_counted.max(want.counted.len());
        }
    }
    cov
}

#[test]
fn random_rulesets_agree_with_the_reference() {
    let cov = differential(&GenConfig::default(), 1, 2500, 40);
    println!("{cov:#?}");
    assert!(cov.refused * 50 < cov.rulesets, "too many refused: {cov:?}");
    for v in ["Accept", "Drop"] {
        assert!(cov.verdicts[v] * 20 > cov.packets, "too few {v}: {cov:?}");
    }
    assert!(
        cov.verdicts
            .keys()
            .filter(|k| k.starts_with("Reject"))
            .count()
            >= 4,
        "{cov:?}"
    );
    assert!(cov.logged * 20 > cov.packets, "{cov:?}");
    assert!(cov.max_counted >= 8, "{cov:?}");
}

#[test]
fn random_large_rulesets_agree_with_the_reference() {
    let cfg = GenConfig {
        max_rules: 25,
        max_user_chains: 8,
        max_calls: 3,
        ..GenConfig::default()
    };
    let cov = differential(&cfg, 2, 300, 60);
    println!("{cov:#?}");
    assert!(cov.max_entries > 64, "programs should span blocks: {cov:?}");
    assert!(cov.refused * 10 < cov.rulesets, "{cov:?}");
}

/// NAT targets in the nat table (the generator leaves them out unless asked):
/// the simulator must name the reference's NAT target, through the index it
/// would record for the connection.
#[test]
fn random_nat_rulesets_agree_with_the_reference() {
    let cfg = GenConfig {
        nat: true,
        ..GenConfig::default()
    };
    let cov = differential(&cfg, 5, 1500, 40);
    println!("{cov:#?}");
    assert!(cov.refused * 50 < cov.rulesets, "too many refused: {cov:?}");
    for k in ["SNAT", "MASQUERADE", "DNAT", "REDIRECT"] {
        assert!(
            cov.nat.get(k).is_some_and(|&n| n > 50),
            "too few {k}: {cov:?}"
        );
    }
    let cfg = GenConfig {
        nat: true,
        tables: vec![Table::Nat, Table::Filter],
        max_rules: 25,
        max_user_chains: 8,
        max_calls: 3,
        ..GenConfig::default()
    };
    let cov = differential(&cfg, 6, 300, 60);
    println!("{cov:#?}");
    assert!(
        cov.nat.values().sum::<usize>() * 20 > cov.packets,
        "{cov:?}"
    );
}

/// What a harness against the kernel can use: two hooks, filter only, its
/// own interfaces and subnet, no REJECT.
#[test]
fn random_restricted_rulesets_agree_with_the_reference() {
    let cfg = GenConfig {
        ifaces: vec!["vh0".into(), "vh1".into(), "vh10".into()],
        unknown_iface: None,
        subnets: vec!["10.99.0.0/29".parse().unwrap()],
        tables: vec![Table::Filter],
        hooks: vec![Hook::Forward, Hook::Input],
        reject: false,
        ..GenConfig::default()
    };
    let mut rng = Rng::new(3);
    for _ in 0..200 {
        let rs = r#gen::ruleset(&mut rng, &cfg);
        assert_eq!(rs.tables.len(), 1);
        for c in &rs.tables[0].chains {
            if matches!(c.name.as_str(), "OUTPUT") {
                assert!(c.rules.is_empty());
            }
            for r in &c.rules {
                assert!(!matches!(r.target, Target::Reject(_)));
            }
        }
        for _ in 0..20 {
            let p = r#gen::packet_at(&mut rng, &cfg, Hook::Input);
            assert!(p.out_iface.is_none());
            assert!(cfg.ifaces.contains(p.in_iface.as_ref().unwrap()));
        }
    }
    let cov = differential(&cfg, 4, 1500, 40);
    println!("{cov:#?}");
    assert!(!cov.verdicts.keys().any(|k| k.starts_with("Reject")));
}

fn chain(name: &str, policy: Option<Policy>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        policy,
        policy_slot: 1,
        rules,
    }
}

fn filter(chains: Vec<Chain>) -> Ruleset {
    Ruleset {
        tables: vec![TableRules {
            table: Table::Filter,
            chains,
        }],
    }
}

fn plain(target: Target, slot: u32) -> Rule {
    Rule {
        matches: Matches::default(),
        target,
        slot,
    }
}

#[track_caller]
fn refused(rs: &Ruleset, ifaces: &[(String, u32)], what: &str) {
    match compile(rs, ifaces) {
        Ok(_) => panic!("compiled, expected an error about {what:?}"),
        Err(e) => assert!(e.to_string().contains(what), "{e}"),
    }
}

#[test]
fn refuses_jump_loops() {
    let rs = ruleset(
        "*filter
         :INPUT ACCEPT
         :A -
         :B -
         -A INPUT -j A
         -A A -j B
         -A B -g A",
    );
    refused(&rs, &ifaces(), "jump loop A -> B -> A");
}

#[test]
fn refuses_unknown_and_builtin_targets() {
    let rs = ruleset(
        "*filter
         :INPUT ACCEPT
         -A INPUT -j NOPE",
    );
    refused(
        &rs,
        &ifaces(),
        "table filter, chain INPUT, rule 1: jump to chain NOPE, which does not exist",
    );
    let rs = ruleset(
        "*filter
         :INPUT ACCEPT
         -A INPUT -j FORWARD",
    );
    refused(&rs, &ifaces(), "jump to built-in chain FORWARD");
}

#[test]
fn refuses_walks_longer_than_the_datapath_follows() {
    let counting: Vec<Rule> = (0..300).map(|i| plain(Target::None, i + 2)).collect();
    let rs = filter(vec![chain("FORWARD", Some(Policy::Drop), counting)]);
    refused(&rs, &ifaces(), "could go through 301 rules");

    // Many ACCEPTs are fine: each ends the table.
    let accepts: Vec<Rule> = (0..300).map(|i| plain(Target::Accept, i + 2)).collect();
    let rs = filter(vec![chain("FORWARD", Some(Policy::Drop), accepts)]);
    let c = compile(&rs, &ifaces()).unwrap();
    assert_eq!(c.hooks[Hook::Forward.index() as usize].longest_walk, 1);

    let mut rules: Vec<Rule> = (0..WALK_MAX - 1)
        .map(|i| plain(Target::None, i + 2))
        .collect();
    rules.push(plain(Target::Drop, 1000));
    let rs = filter(vec![chain("FORWARD", Some(Policy::Accept), rules)]);
    let c = compile(&rs, &ifaces()).unwrap();
    assert_eq!(
        c.hooks[Hook::Forward.index() as usize].longest_walk,
        WALK_MAX
    );
}

#[test]
fn refuses_programs_beyond_the_entry_limit() {
    let rules: Vec<Rule> = (0..RS_ENTRIES_MAX)
        .map(|i| plain(Target::Drop, i % 1000 + 2))
        .collect();
    let rs = filter(vec![chain("INPUT", Some(Policy::Accept), rules)]);
    refused(&rs, &ifaces(), "more than 65536 entries");
}

#[test]
fn refuses_what_the_maps_cannot_hold() {
    let rs = filter(vec![chain(
        "INPUT",
        Some(Policy::Accept),
        vec![plain(Target::Drop, RS_SLOTS_MAX)],
    )]);
    refused(&rs, &ifaces(), "counter slot 131072");
    let long = Target::Log {
        prefix: "x".repeat(30),
    };
    let rs = filter(vec![chain(
        "INPUT",
        Some(Policy::Accept),
        vec![plain(long, 2)],
    )]);
    refused(&rs, &ifaces(), "longer than 29 bytes");
    let rs = ruleset("*filter");
    refused(&rs, &[("a".into(), 0)], "ifindex 0");
    refused(&rs, &[("a".into(), 4), ("b".into(), 4)], "given twice");
}

#[test]
fn refuses_images_beyond_half_the_maps() {
    // Distinct sources, destinations and ports: three classes per rule.
    let rules: Vec<Rule> = (0..60_000u32)
        .map(|i| Rule {
            matches: Matches {
                src: Some(Neg::new(ipnet::Ipv4Net::new(blocked(i), 32).unwrap())),
                dst: Some(Neg::new(ipnet::Ipv4Net::new(blocked(i + 1), 32).unwrap())),
                proto: Some(Neg::new(proto::TCP)),
                dport: Some(Neg::new(PortRange {
                    lo: port_of(i),
                    hi: port_of(i),
                })),
                ..Matches::default()
            },
            target: Target::Drop,
            slot: i + 10,
        })
        .collect();
    // Two hooks' worth: more than half of the class map.
    let rs = filter(vec![
        chain("INPUT", Some(Policy::Accept), rules.clone()),
        chain("FORWARD", Some(Policy::Accept), rules),
    ]);
    refused(&rs, &ifaces(), "elements in map NETCTL_RS_CLASS");
}

#[test]
fn log_prefixes_are_shared_and_nul_padded() {
    let rs = ruleset(
        r#"*filter
         :INPUT ACCEPT
         :FORWARD ACCEPT
         -A INPUT -j LOG --log-prefix "one "
         -A FORWARD -j LOG --log-prefix "one "
         -A FORWARD -j LOG --log-prefix two"#,
    );
    let c = compile(&rs, &ifaces()).unwrap();
    assert_eq!(c.logs, ["one ", "two"]);
    let img = c.image(1);
    assert_eq!(img.logs.len(), 2);
    assert_eq!(img.logs[0].0, RS_LOG_MAX);
    assert_eq!(&img.logs[0].1[..5], b"one \0");
}

#[test]
fn header_and_entries_layout() {
    let rs = ruleset(
        "*nat
         :PREROUTING ACCEPT
         -A PREROUTING -p tcp -j ACCEPT
         *filter
         :INPUT DROP
         -A INPUT -p tcp --dport 22 -j ACCEPT
         -A INPUT -p tcp -j REJECT --reject-with tcp-reset",
    );
    let c = compile(&rs, &ifaces()).unwrap();
    let pre = &c.hooks[Hook::Prerouting.index() as usize];
    assert_eq!((pre.nat_start, pre.nat_end, pre.entries.len()), (0, 2, 2));
    let input = &c.hooks[Hook::Input.index() as usize];
    let kinds: Vec<u8> = input.entries.iter().map(|e| e.kind).collect();
    // filter's INPUT chain, then nat's (policy only): the kernel runs nat
    // after filter at INPUT.
    assert_eq!((input.nat_start, input.nat_end), (3, 4));
    assert_eq!(
        kinds,
        [entry::SKIP, entry::REJECT, entry::DROP, entry::SKIP]
    );
    assert_eq!((input.entries[0].target, input.entries[3].target), (3, 4));
    assert_eq!(input.entries[1].reject, netctl_common::reject::TCP_RESET);
    let slots: Vec<u32> = input.entries.iter().map(|e| e.slot).collect();
    assert_eq!(slots[..3], [6, 7, 5]);
    // No nat at FORWARD: an empty block where it would be.
    let fwd = &c.hooks[Hook::Forward.index() as usize];
    assert_eq!((fwd.nat_start, fwd.nat_end, fwd.entries.len()), (0, 0, 1));

    let img = c.image(1);
    let hdr = img
        .hooks
        .iter()
        .find(|(i, _)| *i == 5 + Hook::Input.index())
        .unwrap()
        .1;
    assert_eq!((hdr.entries, hdr.nat_start, hdr.nat_end), (4, 3, 4));
    let (i, _) = img
        .entries
        .iter()
        .find(|(_, e)| e.kind == entry::REJECT)
        .unwrap();
    assert_eq!(*i, (5 + Hook::Input.index()) * RS_ENTRIES_MAX + 1);
    check_image(&c, &img);

    // An empty hook still has its header, so a stale one is overwritten.
    let c = compile(&ruleset("*raw"), &ifaces()).unwrap();
    let img = c.image(0);
    assert_eq!(img.hooks.len(), 5);
    let input = img
        .hooks
        .iter()
        .find(|(i, _)| *i == Hook::Input.index())
        .unwrap()
        .1;
    assert_eq!(input.entries, 0);
    check_image(&c, &img);
}

fn nat_range(addr: &str, ports: Option<(u16, u16)>) -> NatRange {
    NatRange {
        addr_min: addr.parse().unwrap(),
        addr_max: addr.parse().unwrap(),
        ports: ports.map(|(lo, hi)| PortRange { lo, hi }),
    }
}

#[test]
fn nat_entries_and_actions_layout() {
    let rs = ruleset(
        "*nat
         :PREROUTING ACCEPT
         :OUTPUT ACCEPT
         :POSTROUTING ACCEPT
         :D -
         -A PREROUTING -p tcp -j D
         -A PREROUTING -j LOG --log-prefix x
         -A OUTPUT -p tcp -j D
         -A POSTROUTING -j SNAT --to-source 192.0.2.1-192.0.2.9
         -A POSTROUTING -p udp -j MASQUERADE --to-ports 1024-65535
         -A D -p tcp --dport 80 -j DNAT --to-destination 172.17.0.2:8080
         -A D -j REDIRECT
         *filter
         :OUTPUT ACCEPT
         -A OUTPUT -j DROP",
    );
    let c = compile(&rs, &ifaces()).unwrap();
    let pre = &c.hooks[Hook::Prerouting.index() as usize];
    let shape: Vec<(u8, u32)> = pre.entries.iter().map(|e| (e.kind, e.slot)).collect();
    assert_eq!(
        shape,
        [
            (entry::CONTINUE, 6),
            (entry::NAT, 11),
            (entry::NAT, 12),
            (entry::LOG, 7),
            (entry::SKIP, 2),
        ]
    );
    assert_eq!((pre.nat_start, pre.nat_end), (0, 5));
    assert!(pre.entries[1..3].iter().all(|e| e.target == 5));
    // Actions are shared: OUTPUT's copy of D uses PREROUTING's.
    let out = &c.hooks[Hook::Output.index() as usize];
    assert_eq!((out.nat_start, out.nat_end), (0, 4));
    let nat_logs = |p: &HookProgram| -> Vec<u32> {
        p.entries
            .iter()
            .filter(|e| e.kind == entry::NAT)
            .map(|e| e.log)
            .collect()
    };
    assert_eq!(nat_logs(pre), [0, 1]);
    assert_eq!(nat_logs(out), [0, 1]);
    let post = &c.hooks[Hook::Postrouting.index() as usize];
    assert_eq!(nat_logs(post), [2, 3]);
    assert_eq!(c.nat.len(), 4);
    let dnat = c.nat[0];
    assert_eq!(
        (
            dnat.kind,
            dnat.flags,
            dnat.addr_min,
            dnat.addr_max,
            dnat.port_min,
            dnat.port_max
        ),
        (
            nat_kind::DNAT,
            nat_range::PORTS,
            [172, 17, 0, 2],
            [172, 17, 0, 2],
            8080,
            8080
        )
    );
    assert_eq!((c.nat[1].kind, c.nat[1].flags), (nat_kind::REDIRECT, 0));
    assert_eq!(
        (c.nat[2].kind, c.nat[2].addr_min, c.nat[2].addr_max),
        (nat_kind::SNAT, [192, 0, 2, 1], [192, 0, 2, 9])
    );
    assert_eq!(
        (
            c.nat[3].kind,
            c.nat[3].flags,
            c.nat[3].port_min,
            c.nat[3].port_max
        ),
        (nat_kind::MASQUERADE, nat_range::PORTS, 1024, 65535)
    );
    // A NAT entry goes on like SKIP: the walk bound counts it so.
    assert_eq!(pre.longest_walk, 3);

    for generation in [0, 1] {
        let img = c.image(generation);
        check_image(&c, &img);
        assert_eq!(img.nat[0].0, u32::from(generation) * RS_NAT_MAX);
        assert_eq!(img.len(), {
            let mut without = img.clone();
            without.nat.clear();
            without.len() + 4
        });
        let sim = Simulator::new(&img);
        let p = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 80).i("eth0");
        let (o, i) = sim.run_indexed(Hook::Prerouting, &p.0, true, ifindex_of);
        assert_eq!(i, Some(0));
        assert_eq!(
            o.nat,
            Some(Nat::Dnat(nat_range("172.17.0.2", Some((8080, 8080)))))
        );
        assert_eq!(o.counted, [6, 11]);
        // The nat block is not walked for later packets: no action.
        let (o, i) = sim.run_indexed(Hook::Prerouting, &p.0, false, ifindex_of);
        assert_eq!((o.nat, i), (None, None));
        let p = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 22);
        let (o, i) = sim.run_indexed(Hook::Output, &p.0, true, ifindex_of);
        assert_eq!((o.nat, i), (Some(Nat::Redirect(None)), Some(1)));
        assert_eq!(o.verdict, Verdict::Drop);
        testkit::check(
            &rs,
            Hook::Output,
            &p,
            true,
            &evaluate(&rs, Hook::Output, &p.0, true),
        );
    }
}

#[test]
fn refuses_nat_where_the_datapath_cannot_apply_it() {
    let snat = |a: u32| Target::Nat(Nat::Snat(nat_range(&Ipv4Addr::from(a).to_string(), None)));
    let nat_table = |chain: &str, rules: Vec<Rule>| {
        let mut tr = TableRules::new(Table::Nat);
        tr.chain_mut(chain).unwrap().rules = rules;
        Ruleset { tables: vec![tr] }
    };
    // Distinct actions: one more than a generation holds.
    let rules: Vec<Rule> = (0..=RS_NAT_MAX)
        .map(|i| plain(snat(0x0a00_0000 + i), i + 10))
        .collect();
    refused(
        &nat_table("POSTROUTING", rules),
        &ifaces(),
        "more than 4096 distinct NAT targets",
    );
    // As many as it holds, some twice: fine.
    let rules: Vec<Rule> = (0..RS_NAT_MAX + 100)
        .map(|i| plain(snat(0x0a00_0000 + i % RS_NAT_MAX), i + 10))
        .collect();
    let c = compile(&nat_table("POSTROUTING", rules), &ifaces()).unwrap();
    assert_eq!(c.nat.len(), RS_NAT_MAX as usize);
    // What validate refuses, the compiler refuses too.
    refused(
        &nat_table("PREROUTING", vec![plain(snat(1), 5)]),
        &ifaces(),
        "SNAT reached from PREROUTING",
    );
    let rs = filter(vec![chain(
        "INPUT",
        Some(Policy::Accept),
        vec![plain(Target::Nat(Nat::Masquerade(None)), 5)],
    )]);
    refused(&rs, &ifaces(), "MASQUERADE outside the nat table");
}

#[test]
fn goto_leaves_a_pseudo_skip_without_a_slot() {
    let rs = ruleset(
        "*filter
         :FORWARD ACCEPT
         :A -
         -A FORWARD -p tcp -g A
         -A FORWARD -j DROP
         -A A -s 10.0.0.1 -j DROP",
    );
    let c = compile(&rs, &ifaces()).unwrap();
    let e = &c.hooks[Hook::Forward.index() as usize].entries;
    let shape: Vec<(u8, u32)> = e.iter().map(|e| (e.kind, e.slot)).collect();
    assert_eq!(
        shape,
        [
            (entry::CONTINUE, 4),
            (entry::DROP, 6),
            (entry::SKIP, RS_NO_SLOT),
            (entry::DROP, 5),
            (entry::SKIP, 2),
        ]
    );
    // Both the goto'd chain's end and the builtin's RETURN point are the policy.
    assert_eq!(e[2].target, 4);
}

#[test]
fn wild_entries_are_kept_once() {
    let rs = ruleset(
        "*filter
         :INPUT ACCEPT
         -A INPUT -s 10.0.0.1 -j DROP
         -A INPUT -s 10.0.0.2 -j DROP
         -A INPUT -p udp -j DROP",
    );
    let c = compile(&rs, &ifaces()).unwrap();
    let src = &c.hooks[Hook::Input.index() as usize].fields[field::SRC as usize];
    // The udp rule and the policy do not look at the source.
    assert_eq!(src.wild, [(0, 0b1100)]);
    assert_eq!(src.class_count(), 3);
    assert_eq!(src.lpm.len(), 3);
    assert!(
        src.classes()
            .all(|w| w.iter().all(|(_, w)| w & 0b1100 == 0))
    );
}

#[test]
fn interfaces_with_equal_behaviour_share_a_class() {
    let rs = ruleset(
        "*filter
         :FORWARD ACCEPT
         -A FORWARD -i veth+ -j DROP
         -A FORWARD -i eth1 -j DROP
         -A FORWARD -o + -j DROP",
    );
    let c = compile(&rs, &ifaces()).unwrap();
    let fwd = &c.hooks[Hook::Forward.index() as usize];
    let input = &fwd.fields[field::IN as usize];
    // Unknown/none (the default), veth*, eth1.
    assert_eq!(input.class_count(), 3);
    // Only the veths and eth1 need LPM entries of their own.
    let mut named: Vec<u32> = input
        .lpm
        .iter()
        .filter(|e| e.len == 32)
        .map(|e| e.value)
        .collect();
    named.sort_unstable();
    assert_eq!(named, [3, 10, 11, 12]);
    let out = &fwd.fields[field::OUT as usize];
    assert_eq!(out.lpm.len(), 1, "the bare + holds everywhere");
    // And the datapath agrees with the reference on each of them.
    for (name, _) in testkit::IFACES {
        let p = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 2).i(name);
        let want = evaluate(&rs, Hook::Forward, &p.0, true);
        testkit::check(&rs, Hook::Forward, &p, true, &want);
    }
}

#[test]
fn port_ranges_split_into_prefixes() {
    let rs = ruleset(
        "*filter
         :INPUT ACCEPT
         -A INPUT -p tcp --dport 1000:1999 -j DROP
         -A INPUT -p tcp --dport 1500 -j ACCEPT",
    );
    let c = compile(&rs, &ifaces()).unwrap();
    let dport = &c.hooks[Hook::Input.index() as usize].fields[field::DPORT as usize];
    assert!(dport.lpm.len() > 5, "1000:1999 is several prefixes");
    for port in [0, 999, 1000, 1001, 1499, 1500, 1501, 1999, 2000, 65535] {
        let p = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", port);
        let want = evaluate(&rs, Hook::Input, &p.0, true);
        let expect = if (1000..=1999).contains(&port) {
            Verdict::Drop
        } else {
            Verdict::Accept
        };
        assert_eq!(want.verdict, expect, "port {port}");
        testkit::check(&rs, Hook::Input, &p, true, &want);
    }
}

#[test]
fn range_prefixes_cover_exactly() {
    let mut rng = Rng::new(9);
    for _ in 0..2000 {
        let a = rng.below(65536) as u32;
        let b = rng.below(65536) as u32;
        let (lo, hi) = (a.min(b), a.max(b));
        let mut out = Vec::new();
        flatten::range_prefixes(lo, hi, 16, &mut out);
        let mut next = lo;
        for (v, len) in out {
            let start = v >> 16;
            assert_eq!(start, next);
            next = start + (1 << (16 - len));
        }
        assert_eq!(next, hi + 1);
    }
    let mut out = Vec::new();
    flatten::range_prefixes(0, u32::MAX, 32, &mut out);
    assert_eq!(out, [(0, 0)]);
}

/// `n` rules `-s A/32 -p tcp --dport P -j target`, distinct sources, then
/// a final ACCEPT: a large blocklist.
fn blocklist(n: u32, target: Target) -> Ruleset {
    let mut rules: Vec<Rule> = (0..n)
        .map(|i| Rule {
            matches: Matches {
                src: Some(Neg::new(ipnet::Ipv4Net::new(blocked(i), 32).unwrap())),
                proto: Some(Neg::new(proto::TCP)),
                dport: Some(Neg::new(PortRange {
                    lo: port_of(i),
                    hi: port_of(i),
                })),
                ..Matches::default()
            },
            target: target.clone(),
            slot: i + 10,
        })
        .collect();
    rules.push(plain(Target::Accept, 2));
    filter(vec![chain("FORWARD", Some(Policy::Drop), rules)])
}

fn blocked(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i * 3)
}

fn port_of(i: u32) -> u16 {
    (1 + (i * 7919) % 65535) as u16
}

#[test]
fn large_blocklists_give_images_linear_in_rules() {
    for n in [2_000, 10_000] {
        let rs = blocklist(n, Target::Drop);
        let c = compile(&rs, &ifaces()).unwrap();
        let img = c.image(0);
        // Per rule: a class key and a summary and a word for its source and
        // for its port, and the entry; the protocol's class has n/64 words.
        assert!(
            img.len() < 8 * n as usize,
            "{} elements for {n} rules",
            img.len()
        );
        if n == 2_000 {
            check_image(&c, &img);
        }
        let sim = Simulator::new(&img);
        let mut rng = Rng::new(u64::from(n));
        for _ in 0..200 {
            let i = rng.below(u64::from(n)) as u32;
            let src = blocked(i).to_string();
            let port = if rng.chance(50) {
                port_of(i)
            } else {
                port_of(i) ^ 1
            };
            let p = Pkt::tcp(&src, 1, "10.0.0.2", port).0;
            let want = evaluate(&rs, Hook::Forward, &p, true);
            assert_eq!(sim.run(Hook::Forward, &p, true, ifindex_of), want);
        }
    }
}

/// Timings for the record (`cargo test --release -p netctl --lib
/// rules::compile::tests::compile_timings -- --ignored --nocapture`).
#[test]
#[ignore]
fn compile_timings() {
    for (n, target) in [
        (10_000, Target::Drop),
        (50_000, Target::Drop),
        (50_000, Target::Accept),
    ] {
        let rs = blocklist(n, target.clone());
        // Best of five: the build machines are shared.
        let (mut compiled, mut total) = (Duration::MAX, Duration::MAX);
        let mut img = None;
        for _ in 0..5 {
            let t = Instant::now();
            let c = compile(&rs, &ifaces()).unwrap();
            compiled = compiled.min(t.elapsed());
            img = Some(c.image(0));
            total = total.min(t.elapsed());
        }
        let img = img.unwrap();
        println!(
            "{n} rules (-j {target:?}): compile {compiled:?}, with image {total:?}; \
             {} map elements ({} class, {} summary, {} words, {} entries), {:.1} MB",
            img.len(),
            img.class.len(),
            img.summary.len(),
            img.words.len(),
            img.entries.len(),
            img.bytes() as f64 / 1e6
        );
    }
}
