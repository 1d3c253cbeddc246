//! Random rulesets and packets, for property tests: the compiler against the
//! reference interpreter here, the real datapath against the kernel's
//! netfilter in the fidelity harness. Everything generated is something
//! iptables accepts (so the harness can load it with `iptables-restore`),
//! and draws from small pools of interfaces, addresses and ports so that
//! rules and packets meet often.
//!
//! Deterministic for a seed: `Rng` is a xorshift generator, so a failing
//! case is reproduced from its seed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::{
    Chain, Hook, IcmpType, Iface, Matches, Multiport, MultiportKind, Nat, NatRange, Neg,
    PacketView, Policy, PortRange, RejectWith, Rule, Ruleset, Table, TableRules, Target, ctstate,
    proto,
};

/// xorshift64* — small, fast, and reproducible from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero; mix the seed so nearby seeds differ.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What the generator may use. The defaults exercise everything; a harness
/// against the kernel narrows them to what it can set up and observe.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Interface names rules match (exactly, as `NAME+` prefixes, or `+`)
    /// and packets carry. Must not be empty.
    pub ifaces: Vec<String>,
    /// A name packets sometimes carry that is not in `ifaces` and that no
    /// pattern but `+` matches (an interface the compiler was not told of).
    pub unknown_iface: Option<String>,
    /// Addresses of rules and packets are drawn in and around these. Must
    /// not be empty.
    pub subnets: Vec<Ipv4Net>,
    /// Ports of rules and packets are drawn from these (and their
    /// neighbours). Must not be empty.
    pub ports: Vec<u16>,
    /// Tables the ruleset has (all their built-in chains are present).
    pub tables: Vec<Table>,
    /// Built-in chains that get rules; the others stay empty, policy ACCEPT.
    pub hooks: Vec<Hook>,
    /// Rules per chain, at most.
    pub max_rules: usize,
    /// User chains per table, at most.
    pub max_user_chains: usize,
    /// Call sites (jumps and gotos) per user chain, at most: inlining copies
    /// a chain per call site, so this keeps programs small.
    pub max_calls: usize,
    pub reject: bool,
    pub log: bool,
    pub jump: bool,
    pub goto: bool,
    /// `-m conntrack --ctstate` matches (never in raw, where conntrack has
    /// not run yet).
    pub ctstate: bool,
    /// DROP policies (never in nat, which is not for filtering).
    pub drop_policy: bool,
    /// NAT targets (SNAT, MASQUERADE, DNAT, REDIRECT) in the nat table,
    /// each only where it works. Off by default: a harness that checks
    /// packets against the kernel must then follow translated packets.
    pub nat: bool,
    /// With `nat`: how often a nat-table rule gets a NAT target, in
    /// draws out of `11 + nat_weight` (the other targets take 11).
    pub nat_weight: u64,
    /// With `nat`: the addresses SNAT and DNAT translate to are drawn from
    /// these (empty: in and around `subnets`, as match addresses are). A
    /// harness names the addresses where a translated packet is seen.
    pub nat_addrs: Vec<Ipv4Addr>,
    /// With `nat`: SNAT and DNAT address ranges (`A-B`), and port ranges
    /// for DNAT and REDIRECT. Off, every such range is a single value,
    /// which is where netctl and the kernel choose alike (netctl takes a
    /// range's first address and, for destinations, its first port).
    pub nat_ranges: bool,
    /// With `nat`: how likely each match but `-p` is in the nat table, in
    /// percent of its usual chance (100: as elsewhere). Lower, more of a
    /// connection's first packets meet a NAT target.
    pub nat_matches: u64,
    /// The first counter slot; every rule and policy gets the next one.
    pub first_slot: u32,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            ifaces: ["eth0", "eth1", "veth1a", "veth1b", "veth2", "br0"]
                .map(String::from)
                .to_vec(),
            unknown_iface: Some("unknown9".to_owned()),
            subnets: [
                "10.0.0.0/30",
                "10.0.1.0/29",
                "172.17.0.0/28",
                "192.168.1.128/30",
            ]
            .map(|s| s.parse().expect("a subnet"))
            .to_vec(),
            ports: vec![0, 22, 53, 80, 443, 1024, 8080, 65535],
            tables: Table::ALL.to_vec(),
            hooks: Hook::ALL.to_vec(),
            max_rules: 6,
            max_user_chains: 4,
            max_calls: 2,
            reject: true,
            log: true,
            jump: true,
            goto: true,
            ctstate: true,
            drop_policy: true,
            nat: false,
            nat_weight: 2,
            nat_addrs: Vec::new(),
            nat_ranges: true,
            nat_matches: 100,
            first_slot: 1,
        }
    }
}

/// A random ruleset iptables would load: every table of `cfg.tables` with
/// all its built-in chains, rules in those of `cfg.hooks`, and up to
/// `cfg.max_user_chains` user chains per table called without loops.
pub fn ruleset(rng: &mut Rng, cfg: &GenConfig) -> Ruleset {
    let mut slot = cfg.first_slot;
    let mut next_slot = || {
        let s = slot;
        slot += 1;
        s
    };
    let mut tables = Vec::new();
    for table in Table::ALL {
        if !cfg.tables.contains(&table) {
            continue;
        }
        let active: Vec<Hook> = table
            .hooks()
            .iter()
            .copied()
            .filter(|h| cfg.hooks.contains(h))
            .collect();
        let users = if active.is_empty() {
            0
        } else {
            rng.below(cfg.max_user_chains as u64 + 1) as usize
        };
        let names: Vec<String> = (0..users).map(|i| format!("CHAIN{i}")).collect();
        let mut calls = vec![0usize; users];
        let mut chains = Vec::new();
        for &hook in table.hooks() {
            let on = active.contains(&hook);
            let policy = if on && cfg.drop_policy && table != Table::Nat && rng.chance(30) {
                Policy::Drop
            } else {
                Policy::Accept
            };
            let rules = if on {
                let n = rng.below(cfg.max_rules as u64 + 1) as usize;
                (0..n)
                    .map(|_| rule(rng, cfg, table, &names, 0, &mut calls, &mut next_slot))
                    .collect()
            } else {
                Vec::new()
            };
            chains.push(Chain {
                name: hook.chain_name().to_owned(),
                policy: Some(policy),
                policy_slot: next_slot(),
                rules,
            });
        }
        for (i, name) in names.iter().enumerate() {
            let n = rng.below(cfg.max_rules as u64 + 1) as usize;
            // Calls only go to later chains: no loops.
            let rules = (0..n)
                .map(|_| rule(rng, cfg, table, &names, i + 1, &mut calls, &mut next_slot))
                .collect();
            chains.push(Chain {
                name: name.clone(),
                policy: None,
                policy_slot: 0,
                rules,
            });
        }
        let mut tr = TableRules { table, chains };
        restrict_ifaces(&mut tr);
        restrict_nat(&mut tr);
        if !cfg.nat_ranges {
            single_destination_ports(&mut tr);
        }
        tables.push(tr);
    }
    Ruleset { tables }
}

/// iptables refuses `-o` where there is no output device yet (PREROUTING,
/// INPUT) and `-i` where there is no input device (OUTPUT, POSTROUTING);
/// drop them from every chain reachable from such a hook.
fn restrict_ifaces(tr: &mut TableRules) {
    let mut hooks_of: Vec<Vec<Hook>> = vec![Vec::new(); tr.chains.len()];
    for (i, c) in tr.chains.iter().enumerate() {
        if c.policy.is_some()
            && let Some(h) = Hook::from_chain_name(&c.name)
        {
            hooks_of[i].push(h);
        }
    }
    // Calls go from built-in chains and from earlier to later user chains,
    // so one pass in chain order reaches the fixpoint.
    for i in 0..tr.chains.len() {
        let from = hooks_of[i].clone();
        for r in &tr.chains[i].rules {
            if let Target::Jump(n) | Target::Goto(n) = &r.target
                && let Some(j) = tr.chains.iter().position(|c| &c.name == n)
            {
                for h in &from {
                    if !hooks_of[j].contains(h) {
                        hooks_of[j].push(*h);
                    }
                }
            }
        }
    }
    for (c, hooks) in tr.chains.iter_mut().zip(hooks_of) {
        let no_out = hooks
            .iter()
            .any(|h| matches!(h, Hook::Prerouting | Hook::Input));
        let no_in = hooks
            .iter()
            .any(|h| matches!(h, Hook::Output | Hook::Postrouting));
        for r in &mut c.rules {
            if no_out {
                r.matches.out_iface = None;
            }
            if no_in {
                r.matches.in_iface = None;
            }
        }
    }
}

/// NAT targets work at some hooks only: one in a chain reached from
/// elsewhere becomes its mirror (SNAT and DNAT, MASQUERADE and REDIRECT)
/// if that works there, or ACCEPT. Draws nothing from the generator.
pub fn restrict_nat(tr: &mut TableRules) {
    let masks = super::validate::chain_hooks(tr);
    for (c, used) in tr.chains.iter_mut().zip(masks) {
        for r in &mut c.rules {
            let Target::Nat(nat) = r.target else {
                continue;
            };
            let fits = |n: &Nat| used & !super::validate::nat_hooks(n) == 0;
            if fits(&nat) {
                continue;
            }
            let mirror = match nat {
                Nat::Snat(x) => Nat::Dnat(x),
                Nat::Dnat(x) => Nat::Snat(x),
                Nat::Masquerade(p) => Nat::Redirect(p),
                Nat::Redirect(p) => Nat::Masquerade(p),
            };
            r.target = if fits(&mirror) {
                Target::Nat(mirror)
            } else {
                Target::Accept
            };
        }
    }
}

/// DNAT and REDIRECT port ranges made their first port (`nat_ranges`
/// off): also those `restrict_nat` made from an SNAT or MASQUERADE.
fn single_destination_ports(tr: &mut TableRules) {
    for r in tr.chains.iter_mut().flat_map(|c| &mut c.rules) {
        if let Target::Nat(Nat::Dnat(NatRange { ports: Some(p), .. }) | Nat::Redirect(Some(p))) =
            &mut r.target
        {
            p.hi = p.lo;
        }
    }
}

fn neg<T>(rng: &mut Rng, make: impl FnOnce(&mut Rng) -> T) -> Neg<T> {
    let value = make(rng);
    Neg {
        negated: rng.chance(25),
        value,
    }
}

fn rule(
    rng: &mut Rng,
    cfg: &GenConfig,
    table: Table,
    chains: &[String],
    first_callee: usize,
    calls: &mut [usize],
    next_slot: &mut impl FnMut() -> u32,
) -> Rule {
    let matches = matches(rng, cfg, table);
    let tcp = matches
        .proto
        .as_ref()
        .is_some_and(|p| !p.negated && p.value == proto::TCP);
    let callees: Vec<usize> = (first_callee..chains.len())
        .filter(|&c| calls[c] < cfg.max_calls)
        .collect();
    // NAT targets only when asked for: without them the generator draws
    // exactly what it always did.
    let kinds = if cfg.nat && table == Table::Nat {
        11 + cfg.nat_weight
    } else {
        11
    };
    let target = loop {
        let t = match rng.below(kinds) {
            0 => Target::None,
            1 | 2 => Target::Accept,
            3 | 4 if table != Table::Nat => Target::Drop,
            5 if cfg.reject && table == Table::Filter => {
                let with = *rng.pick(&[
                    RejectWith::IcmpPortUnreachable,
                    RejectWith::IcmpNetUnreachable,
                    RejectWith::IcmpHostUnreachable,
                    RejectWith::IcmpAdminProhibited,
                    RejectWith::TcpReset,
                ]);
                // iptables allows tcp-reset only on `-p tcp` rules.
                if with == RejectWith::TcpReset && !tcp {
                    continue;
                }
                Target::Reject(with)
            }
            6 => Target::Return,
            7 if cfg.log => Target::Log {
                prefix: rng
                    .pick(&["", "fw: ", "drop ", "a-prefix-of-29-characters-xxx"])
                    .to_string(),
            },
            8 | 9 if cfg.jump && !callees.is_empty() => {
                let c = *rng.pick(&callees);
                calls[c] += 1;
                Target::Jump(chains[c].clone())
            }
            10 if cfg.goto && !callees.is_empty() => {
                let c = *rng.pick(&callees);
                calls[c] += 1;
                Target::Goto(chains[c].clone())
            }
            11.. if kinds > 11 => Target::Nat(nat_target(rng, cfg, &matches)),
            _ => continue,
        };
        break t;
    };
    Rule {
        matches,
        target,
        slot: next_slot(),
    }
}

fn matches(rng: &mut Rng, cfg: &GenConfig, table: Table) -> Matches {
    let mut m = Matches::default();
    let pc = |p: u64| {
        if cfg.nat && table == Table::Nat {
            p * cfg.nat_matches / 100
        } else {
            p
        }
    };
    if rng.chance(pc(25)) {
        m.in_iface = Some(neg(rng, |r| iface(r, cfg)));
    }
    if rng.chance(pc(25)) {
        m.out_iface = Some(neg(rng, |r| iface(r, cfg)));
    }
    if rng.chance(pc(35)) {
        m.src = Some(addr_match(rng, cfg));
    }
    if rng.chance(pc(35)) {
        m.dst = Some(addr_match(rng, cfg));
    }
    if rng.chance(60) {
        let p = *rng.pick(&[proto::TCP, proto::TCP, proto::UDP, proto::ICMP, 47]);
        let p = neg(rng, |_| p);
        let (negated, p) = (p.negated, p.value);
        m.proto = Some(Neg { negated, value: p });
        // Port and ICMP matches need a plain `-p tcp/udp/icmp`.
        if !negated && (p == proto::TCP || p == proto::UDP) {
            if rng.chance(pc(30)) {
                m.sport = Some(neg(rng, |r| port_range(r, cfg)));
            }
            if rng.chance(pc(40)) {
                m.dport = Some(neg(rng, |r| port_range(r, cfg)));
            }
            if rng.chance(pc(30)) {
                m.multiport = Some(neg(rng, |r| multiport(r, cfg)));
            }
        }
        if !negated && p == proto::ICMP && rng.chance(pc(60)) {
            m.icmp = Some(neg(rng, icmp_type));
        }
    }
    if cfg.ctstate && table != Table::Raw && rng.chance(pc(30)) {
        let mask = rng.range(1, 31) as u8;
        m.ctstate = Some(neg(rng, |_| mask));
    }
    m
}

/// A NAT target of any kind (`restrict_nat` fits it to its chain's hooks),
/// with ports only for a plain `-p tcp` or `-p udp`.
fn nat_target(rng: &mut Rng, cfg: &GenConfig, m: &Matches) -> Nat {
    let ports_ok = m
        .proto
        .as_ref()
        .is_some_and(|p| !p.negated && (p.value == proto::TCP || p.value == proto::UDP));
    let mut ports = if ports_ok && rng.chance(50) {
        Some(port_range(rng, cfg))
    } else {
        None
    };
    let kind = rng.below(4);
    // Destinations: a single port unless ranges are asked for.
    if !cfg.nat_ranges
        && (kind == 1 || kind == 3)
        && let Some(p) = &mut ports
    {
        p.hi = p.lo;
    }
    if kind >= 2 {
        return if kind == 2 {
            Nat::Masquerade(ports)
        } else {
            Nat::Redirect(ports)
        };
    }
    let addr_min = if cfg.nat_addrs.is_empty() {
        addr(rng, cfg)
    } else {
        *rng.pick(&cfg.nat_addrs)
    };
    let addr_max = if cfg.nat_ranges && rng.chance(30) {
        Ipv4Addr::from(u32::from(addr_min).saturating_add(rng.range(1, 3) as u32))
    } else {
        addr_min
    };
    let range = NatRange {
        addr_min,
        addr_max,
        ports,
    };
    if kind == 0 {
        Nat::Snat(range)
    } else {
        Nat::Dnat(range)
    }
}

/// `-s`/`-d`, possibly negated; never `! -s 0.0.0.0/0`, which iptables-nft
/// refuses (and which could never match).
fn addr_match(rng: &mut Rng, cfg: &GenConfig) -> Neg<Ipv4Net> {
    let mut m = neg(rng, |r| net(r, cfg));
    if m.value.prefix_len() == 0 {
        m.negated = false;
    }
    m
}

fn iface(rng: &mut Rng, cfg: &GenConfig) -> Iface {
    let name = rng.pick(&cfg.ifaces).clone();
    match rng.below(10) {
        0..6 => Iface {
            name,
            wildcard: false,
        },
        6..9 if name.is_ascii() && !name.is_empty() => {
            let cut = rng.range(1, name.len() as u64) as usize;
            Iface {
                name: name[..cut].to_owned(),
                wildcard: true,
            }
        }
        _ => Iface {
            name: String::new(),
            wildcard: true,
        },
    }
}

/// An address in or near one of the subnets, at a prefix length from a bit
/// shorter than the subnet's down to a host.
fn addr(rng: &mut Rng, cfg: &GenConfig) -> Ipv4Addr {
    let s = rng.pick(&cfg.subnets);
    if rng.chance(5) {
        return Ipv4Addr::from(rng.next_u32());
    }
    let host_bits = 32 - u32::from(s.prefix_len()) + 1;
    let mask = if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    Ipv4Addr::from((u32::from(s.network()) & !mask) | (rng.next_u32() & mask))
}

fn net(rng: &mut Rng, cfg: &GenConfig) -> Ipv4Net {
    let a = addr(rng, cfg);
    let s_len = cfg
        .subnets
        .iter()
        .map(|s| s.prefix_len())
        .min()
        .unwrap_or(24);
    let len = if rng.chance(5) {
        0
    } else {
        rng.range(u64::from(s_len.saturating_sub(2)), 32) as u8
    };
    Ipv4Net::new(a, len).expect("len <= 32").trunc()
}

fn port(rng: &mut Rng, cfg: &GenConfig) -> u16 {
    let p = *rng.pick(&cfg.ports);
    match rng.below(6) {
        0 => p.saturating_sub(1),
        1 => p.saturating_add(1),
        _ => p,
    }
}

fn port_range(rng: &mut Rng, cfg: &GenConfig) -> PortRange {
    let a = port(rng, cfg);
    if rng.chance(60) {
        return PortRange { lo: a, hi: a };
    }
    let b = port(rng, cfg);
    PortRange {
        lo: a.min(b),
        hi: a.max(b),
    }
}

fn multiport(rng: &mut Rng, cfg: &GenConfig) -> Multiport {
    let kind = *rng.pick(&[
        MultiportKind::Source,
        MultiportKind::Destination,
        MultiportKind::Either,
    ]);
    // iptables' limit: 15 ports, a range counting as two.
    let mut ports = Vec::new();
    let mut used = 0;
    for _ in 0..rng.range(1, 5) {
        let r = port_range(rng, cfg);
        let cost = if r.lo == r.hi { 1 } else { 2 };
        if used + cost > 15 {
            break;
        }
        used += cost;
        ports.push(r);
    }
    Multiport { kind, ports }
}

fn icmp_type(rng: &mut Rng) -> IcmpType {
    if rng.chance(15) {
        // `--icmp-type any`
        return IcmpType {
            typ: 0xff,
            code_lo: 0,
            code_hi: 0xff,
        };
    }
    let typ = *rng.pick(&[0, 3, 5, 8, 11]);
    if rng.chance(50) {
        // A type alone: every code.
        IcmpType {
            typ,
            code_lo: 0,
            code_hi: 0xff,
        }
    } else {
        let code = rng.below(4) as u8;
        IcmpType {
            typ,
            code_lo: code,
            code_hi: code,
        }
    }
}

/// A random packet; either interface may be absent.
pub fn packet(rng: &mut Rng, cfg: &GenConfig) -> PacketView {
    let mut p = packet_core(rng, cfg);
    p.in_iface = pkt_iface(rng, cfg, true);
    p.out_iface = pkt_iface(rng, cfg, true);
    p
}

/// A random packet as it can appear at `hook`: an input device except in
/// OUTPUT and POSTROUTING, an output device except in PREROUTING and INPUT.
pub fn packet_at(rng: &mut Rng, cfg: &GenConfig, hook: Hook) -> PacketView {
    let mut p = packet_core(rng, cfg);
    let has_in = !matches!(hook, Hook::Output | Hook::Postrouting);
    let has_out = !matches!(hook, Hook::Prerouting | Hook::Input);
    p.in_iface = if has_in {
        pkt_iface(rng, cfg, false)
    } else {
        None
    };
    p.out_iface = if has_out {
        pkt_iface(rng, cfg, false)
    } else {
        None
    };
    p
}

fn pkt_iface(rng: &mut Rng, cfg: &GenConfig, absent: bool) -> Option<String> {
    if absent && rng.chance(15) {
        return None;
    }
    if let Some(u) = &cfg.unknown_iface
        && rng.chance(10)
    {
        return Some(u.clone());
    }
    Some(rng.pick(&cfg.ifaces).clone())
}

fn packet_core(rng: &mut Rng, cfg: &GenConfig) -> PacketView {
    let proto = *rng.pick(&[
        proto::TCP,
        proto::TCP,
        proto::UDP,
        proto::UDP,
        proto::ICMP,
        proto::ICMP,
        47,
    ]);
    let ports = proto == proto::TCP || proto == proto::UDP;
    let icmp = proto == proto::ICMP;
    PacketView {
        in_iface: None,
        out_iface: None,
        src: addr(rng, cfg),
        dst: addr(rng, cfg),
        proto,
        sport: if ports { port(rng, cfg) } else { 0 },
        dport: if ports { port(rng, cfg) } else { 0 },
        icmp_type: if icmp {
            *rng.pick(&[0, 3, 5, 8, 11, 13])
        } else {
            0
        },
        icmp_code: if icmp { rng.below(4) as u8 } else { 0 },
        ctstate: *rng.pick(&[
            ctstate::NEW,
            ctstate::NEW,
            ctstate::ESTABLISHED,
            ctstate::ESTABLISHED,
            ctstate::RELATED,
            ctstate::INVALID,
            ctstate::UNTRACKED,
        ]),
        len: rng.range(28, 1500) as u32,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every constraint iptables puts on what the generator makes.
    fn assert_loadable(rs: &Ruleset, cfg: &GenConfig) {
        let mut slots = HashSet::new();
        for tr in &rs.tables {
            assert!(cfg.tables.contains(&tr.table));
            for h in tr.table.hooks() {
                assert!(
                    tr.chains
                        .iter()
                        .any(|c| c.name == h.chain_name() && c.policy.is_some())
                );
            }
            let reach = reachable_hooks(tr);
            for (c, hooks) in tr.chains.iter().zip(&reach) {
                if let Some(p) = c.policy {
                    assert!(c.policy_slot != 0 && slots.insert(c.policy_slot));
                    assert!(tr.table != Table::Nat || p == Policy::Accept);
                    let h = Hook::from_chain_name(&c.name).unwrap();
                    assert!(cfg.hooks.contains(&h) || c.rules.is_empty());
                }
                for r in &c.rules {
                    assert!(r.slot != 0 && slots.insert(r.slot), "slot {}", r.slot);
                    assert_rule(r, tr.table, hooks, cfg);
                }
            }
        }
    }

    /// The hooks each chain of a table is reachable from.
    fn reachable_hooks(tr: &TableRules) -> Vec<HashSet<Hook>> {
        let mut reach: Vec<HashSet<Hook>> = tr
            .chains
            .iter()
            .map(|c| match c.policy {
                Some(_) => Hook::from_chain_name(&c.name).into_iter().collect(),
                None => HashSet::new(),
            })
            .collect();
        // Iterate to the fixpoint, whatever the chain order.
        loop {
            let mut changed = false;
            for i in 0..tr.chains.len() {
                for r in &tr.chains[i].rules {
                    if let Target::Jump(n) | Target::Goto(n) = &r.target {
                        let j = tr.chains.iter().position(|c| &c.name == n).unwrap();
                        assert!(tr.chains[j].policy.is_none(), "call to a built-in chain");
                        for h in reach[i].clone() {
                            changed |= reach[j].insert(h);
                        }
                    }
                }
            }
            if !changed {
                return reach;
            }
        }
    }

    fn assert_rule(r: &Rule, table: Table, hooks: &HashSet<Hook>, cfg: &GenConfig) {
        let m = &r.matches;
        let plain = |p: u8| m.proto.as_ref().is_some_and(|x| !x.negated && x.value == p);
        let tcp_udp = plain(proto::TCP) || plain(proto::UDP);
        if m.sport.is_some() || m.dport.is_some() || m.multiport.is_some() {
            assert!(tcp_udp, "ports without -p tcp/udp: {r:?}");
        }
        if let Some(mp) = &m.multiport {
            let cost: usize = mp
                .value
                .ports
                .iter()
                .map(|p| if p.lo == p.hi { 1 } else { 2 })
                .sum();
            assert!((1..=15).contains(&cost));
            assert!(mp.value.ports.iter().all(|p| p.lo <= p.hi));
        }
        for p in [&m.sport, &m.dport].into_iter().flatten() {
            assert!(p.value.lo <= p.value.hi);
        }
        if m.icmp.is_some() {
            assert!(plain(proto::ICMP), "icmp-type without -p icmp: {r:?}");
        }
        for a in [&m.src, &m.dst].into_iter().flatten() {
            assert!(!(a.negated && a.value.prefix_len() == 0), "! -s 0/0");
        }
        for i in [&m.in_iface, &m.out_iface].into_iter().flatten() {
            let ok = if i.value.wildcard {
                cfg.ifaces.iter().any(|n| n.starts_with(&i.value.name))
            } else {
                cfg.ifaces.contains(&i.value.name)
            };
            assert!(ok, "interface {:?}", i.value);
        }
        if hooks.contains(&Hook::Prerouting) || hooks.contains(&Hook::Input) {
            assert!(m.out_iface.is_none(), "-o where there is no output device");
        }
        if hooks.contains(&Hook::Output) || hooks.contains(&Hook::Postrouting) {
            assert!(m.in_iface.is_none(), "-i where there is no input device");
        }
        assert!(table != Table::Raw || m.ctstate.is_none());
        if let Some(c) = &m.ctstate {
            assert!(c.value != 0 && c.value < 32);
        }
        match &r.target {
            Target::Reject(with) => {
                assert!(cfg.reject && table == Table::Filter);
                assert!(
                    hooks
                        .iter()
                        .all(|h| matches!(h, Hook::Input | Hook::Forward | Hook::Output))
                );
                if *with == RejectWith::TcpReset {
                    assert!(plain(proto::TCP), "tcp-reset without -p tcp");
                }
            }
            Target::Drop => assert!(table != Table::Nat),
            Target::Log { prefix } => assert!(cfg.log && prefix.len() <= 29),
            Target::Jump(_) => assert!(cfg.jump),
            Target::Goto(_) => assert!(cfg.goto),
            Target::Nat(nat) => {
                assert!(cfg.nat && table == Table::Nat, "{r:?}");
                assert!(hooks.iter().all(|h| nat.hooks().contains(h)), "{r:?}");
                if nat.ports().is_some() {
                    assert!(tcp_udp, "NAT ports without -p tcp/udp: {r:?}");
                }
                if let Nat::Snat(x) | Nat::Dnat(x) = nat {
                    assert!(x.addr_min <= x.addr_max);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn rulesets_are_what_iptables_loads() {
        let configs = [
            GenConfig::default(),
            GenConfig {
                tables: vec![Table::Filter, Table::Mangle],
                hooks: vec![Hook::Forward, Hook::Input],
                reject: false,
                goto: false,
                ..GenConfig::default()
            },
            GenConfig {
                max_rules: 20,
                max_user_chains: 10,
                first_slot: 500,
                ..GenConfig::default()
            },
            GenConfig {
                nat: true,
                ..GenConfig::default()
            },
        ];
        for (i, cfg) in configs.iter().enumerate() {
            let mut rng = Rng::new(i as u64);
            for _ in 0..500 {
                let rs = ruleset(&mut rng, cfg);
                assert_loadable(&rs, cfg);
                // The whole-ruleset checks too, NAT hooks included. The
                // generator's `! --sport 0:65535` (no match, which
                // iptables-save cannot write) is older than this check.
                match crate::rules::validate::validate(&rs) {
                    Err(e) if !e.to_string().contains(":65535 never matches") => {
                        panic!("{e}\n{rs:#?}")
                    }
                    _ => {}
                }
                // No loops, no unknown chains: the compiler takes it.
                if let Err(e) = crate::rules::compile::compile(&rs, &[]) {
                    assert!(e.to_string().contains("datapath follows at most"), "{e}");
                }
            }
        }
    }

    /// NAT targets come only when asked for, and then in every kind, in
    /// user chains too.
    #[test]
    fn nat_targets_only_when_asked() {
        let off = GenConfig::default();
        let on = GenConfig {
            nat: true,
            ..GenConfig::default()
        };
        let nats = |rs: &Ruleset| -> Vec<(Nat, bool)> {
            rs.tables
                .iter()
                .flat_map(|t| &t.chains)
                .flat_map(|c| c.rules.iter().map(move |r| (c, r)))
                .filter_map(|(c, r)| match r.target {
                    Target::Nat(n) => Some((n, c.is_builtin())),
                    _ => None,
                })
                .collect()
        };
        let mut seen = HashSet::new();
        let mut in_user_chains = 0;
        let mut with_ports = 0;
        let mut rng = Rng::new(11);
        for _ in 0..300 {
            assert!(nats(&ruleset(&mut rng, &off)).is_empty());
        }
        let mut rng = Rng::new(12);
        for _ in 0..300 {
            for (n, builtin) in nats(&ruleset(&mut rng, &on)) {
                seen.insert(n.name());
                in_user_chains += usize::from(!builtin);
                with_ports += usize::from(n.ports().is_some());
            }
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(in_user_chains > 10 && with_ports > 10);
    }

    /// A harness's NAT pool and single-valued ranges are what NAT
    /// targets get.
    #[test]
    fn nat_pool_and_single_ranges() {
        let pool: Vec<Ipv4Addr> = ["10.0.0.1", "172.17.0.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let cfg = GenConfig {
            nat: true,
            nat_weight: 8,
            nat_addrs: pool.clone(),
            nat_ranges: false,
            ..GenConfig::default()
        };
        let mut rng = Rng::new(13);
        let mut n = 0;
        for _ in 0..300 {
            let rs = ruleset(&mut rng, &cfg);
            assert_loadable(&rs, &cfg);
            for r in rs
                .tables
                .iter()
                .flat_map(|t| &t.chains)
                .flat_map(|c| &c.rules)
            {
                let Target::Nat(nat) = r.target else {
                    continue;
                };
                n += 1;
                if let Nat::Snat(x) | Nat::Dnat(x) = nat {
                    assert!(pool.contains(&x.addr_min) && x.addr_min == x.addr_max);
                }
                if let (Nat::Dnat(_) | Nat::Redirect(_), Some(p)) = (nat, nat.ports()) {
                    assert_eq!(p.lo, p.hi, "{nat:?}");
                }
            }
        }
        assert!(n > 300, "{n} NAT targets");
    }

    #[test]
    fn slots_are_distinct_from_first_slot() {
        let cfg = GenConfig {
            first_slot: 100,
            ..GenConfig::default()
        };
        let rs = ruleset(&mut Rng::new(7), &cfg);
        let mut slots: Vec<u32> = rs
            .tables
            .iter()
            .flat_map(|t| &t.chains)
            .flat_map(|c| {
                c.rules
                    .iter()
                    .map(|r| r.slot)
                    .chain(c.policy.map(|_| c.policy_slot))
            })
            .collect();
        slots.sort_unstable();
        let n = slots.len() as u32;
        assert_eq!(slots, (100..100 + n).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_same_output() {
        let cfg = GenConfig::default();
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert_eq!(ruleset(&mut a, &cfg), ruleset(&mut b, &cfg));
        assert_eq!(packet(&mut a, &cfg), packet(&mut b, &cfg));
        assert_ne!(
            ruleset(&mut Rng::new(1), &cfg),
            ruleset(&mut Rng::new(2), &cfg)
        );
    }

    #[test]
    fn packets_fit_their_hook_and_config() {
        let cfg = GenConfig::default();
        let mut rng = Rng::new(5);
        for hook in Hook::ALL {
            for _ in 0..200 {
                let p = packet_at(&mut rng, &cfg, hook);
                let has_in = !matches!(hook, Hook::Output | Hook::Postrouting);
                let has_out = !matches!(hook, Hook::Prerouting | Hook::Input);
                assert_eq!(p.in_iface.is_some(), has_in);
                assert_eq!(p.out_iface.is_some(), has_out);
                let ports = p.proto == proto::TCP || p.proto == proto::UDP;
                assert!(ports || (p.sport, p.dport) == (0, 0));
                assert!(p.proto == proto::ICMP || (p.icmp_type, p.icmp_code) == (0, 0));
                assert_eq!(p.ctstate.count_ones(), 1);
                let known = |n: &Option<String>| {
                    n.as_ref().is_none_or(|n| {
                        cfg.ifaces.contains(n) || Some(n) == cfg.unknown_iface.as_ref()
                    })
                };
                assert!(known(&p.in_iface) && known(&p.out_iface));
            }
        }
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(0);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        let seen: HashSet<u64> = (0..1000).map(|_| rng.range(3, 5)).collect();
        assert_eq!(seen, HashSet::from([3, 4, 5]));
    }
}
