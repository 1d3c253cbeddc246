//! What the kernel should count, from the reference interpreter
//! (`netctl::rules::eval::evaluate`, one table at a time in the kernel's
//! priority order) and a model of what surrounds the rules in the kernel:
//! conntrack (states, when an entry is confirmed, `nat` only for the
//! packet that creates a connection, raw before conntrack), routing, and
//! the answers the host stack sends (echo replies, RSTs, ICMP errors, the
//! answers of REJECT), which go through OUTPUT and POSTROUTING.
//!
//! Also the ruleset side of the harness: the generator's configuration for
//! this layout, and the one-deletion-smaller rulesets shrinking tries.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use netctl::rules::eval::{self, Verdict};
use netctl::rules::r#gen::{self as rgen, GenConfig};
use netctl::rules::model::{
    Hook, PacketView, Policy, RejectWith, Ruleset, Table, TableRules, Target, ctstate,
};

use super::counters::{ChainCounts, Count, Saved};
use super::lab::{self, BRIDGES};
use super::scenario::{L2Dst, Pools, Step};
use super::wire::{Ip, L4, tcpf};
use super::{Outcome, Scope, text};

/// The generator narrowed to this layout: its interfaces (bridges and
/// ports, and prefixes of them), subnets and ports.
pub fn gen_config() -> GenConfig {
    GenConfig {
        ifaces: ["br-a", "br-b", "vca", "vcb", "eth0"]
            .map(String::from)
            .to_vec(),
        unknown_iface: None,
        subnets: ["10.1.0.0/30", "10.2.0.0/30", "10.1.0.0/24"]
            .map(|s| s.parse().unwrap())
            .to_vec(),
        ports: vec![22, 53, 80, 443, 1024, 8080, 65535],
        max_rules: 5,
        max_user_chains: 3,
        ..GenConfig::default()
    }
}

pub fn pools() -> Pools {
    Pools {
        ports: gen_config().ports,
    }
}

/// A case's ruleset. Random rulesets drop most packets early (a DROP
/// policy in raw PREROUTING ends everything), so a case draws one of a
/// few profiles: everything; no DROP policies; the filter table alone; or
/// filter and mangle without DROP policies.
///
/// In the `Inbound` scope OUTPUT and POSTROUTING get no rules and keep
/// ACCEPT policies: what the host sends (its answers, REJECT's) then
/// leaves on both sides alike.
///
/// `nat`: a NAT case (`Some(ranges)`, see `nat`): NAT targets, mostly, in
/// the nat table, translating to `nat::pool()`; the profiles all have the
/// nat table: everything; no DROP policies; nat and filter without DROP
/// policies; nat alone.
pub fn ruleset(seed: u64, scope: Scope, nat: Option<bool>) -> Ruleset {
    let mut rng = rgen::Rng::new(seed);
    let mut cfg = gen_config();
    if scope == Scope::Inbound {
        cfg.hooks = vec![Hook::Prerouting, Hook::Input, Hook::Forward];
    }
    if let Some(ranges) = nat {
        cfg.nat = true;
        cfg.nat_weight = 8;
        cfg.nat_addrs = super::nat::pool();
        cfg.nat_ranges = ranges;
        cfg.nat_matches = 40;
        // Matches on the service addresses flows go to.
        cfg.subnets.extend(
            ["10.1.0.100/30", "10.2.0.100/30"].map(|s| s.parse::<ipnet::Ipv4Net>().unwrap()),
        );
        match rng.below(4) {
            0 => {}
            1 => cfg.drop_policy = false,
            2 => {
                cfg.tables = vec![Table::Nat, Table::Filter];
                cfg.drop_policy = false;
            }
            _ => cfg.tables = vec![Table::Nat],
        }
    } else {
        match rng.below(4) {
            0 => {}
            1 => cfg.drop_policy = false,
            2 => cfg.tables = vec![Table::Filter],
            _ => {
                cfg.tables = vec![Table::Mangle, Table::Filter];
                cfg.drop_policy = false;
            }
        }
    }
    let mut rs = rgen::ruleset(&mut rng, &cfg);
    loadable(&mut rs);
    // The tables left out are there all the same, empty (the kernel side
    // restores all four): their policies count too.
    for t in Table::ALL {
        rs.table_mut(t);
    }
    rs.assign_slots().expect("counter slots");
    rs
}

/// What iptables-nft refuses although the model allows it: a negated `/0`
/// address (`! -s 0.0.0.0/0`: RULE_APPEND fails with EINVAL). It never
/// matches; so, for the addresses of this layout, does
/// `-s 255.255.255.255/32`, which takes its place.
pub fn loadable(rs: &mut Ruleset) {
    let never: ipnet::Ipv4Net = "255.255.255.255/32".parse().unwrap();
    for t in &mut rs.tables {
        for c in &mut t.chains {
            for r in &mut c.rules {
                for a in [&mut r.matches.src, &mut r.matches.dst]
                    .into_iter()
                    .flatten()
                {
                    if a.negated && a.value.prefix_len() == 0 {
                        a.negated = false;
                        a.value = never;
                    }
                }
            }
        }
    }
}

/// Rulesets one deletion smaller than `rs`, biggest deletions first: a user
/// chain (with the rules that call it), a rule, a DROP policy made ACCEPT.
pub fn smaller(rs: &Ruleset) -> Vec<Ruleset> {
    let mut out = Vec::new();
    for (ti, t) in rs.tables.iter().enumerate() {
        for (ci, c) in t.chains.iter().enumerate() {
            if c.policy.is_some() {
                continue;
            }
            let mut r = rs.clone();
            let tr = &mut r.tables[ti];
            tr.chains.remove(ci);
            for ch in &mut tr.chains {
                ch.rules.retain(
                    |x| !matches!(&x.target, Target::Jump(n) | Target::Goto(n) if n == &c.name),
                );
            }
            out.push(r);
        }
    }
    for (ti, t) in rs.tables.iter().enumerate() {
        for (ci, c) in t.chains.iter().enumerate() {
            for ri in 0..c.rules.len() {
                let mut r = rs.clone();
                r.tables[ti].chains[ci].rules.remove(ri);
                out.push(r);
            }
        }
    }
    for (ti, t) in rs.tables.iter().enumerate() {
        for (ci, c) in t.chains.iter().enumerate() {
            if c.policy == Some(Policy::Drop) {
                let mut r = rs.clone();
                r.tables[ti].chains[ci].policy = Some(Policy::Accept);
                out.push(r);
            }
        }
    }
    out
}

/// Where a counter slot is: (table, chain, rule index or `None` for the
/// policy).
fn slots(rs: &Ruleset) -> HashMap<u32, (String, String, Option<usize>)> {
    let mut m = HashMap::new();
    for t in &rs.tables {
        for c in &t.chains {
            if c.policy.is_some() {
                m.insert(
                    c.policy_slot,
                    (t.table.name().to_string(), c.name.clone(), None),
                );
            }
            for (i, r) in c.rules.iter().enumerate() {
                m.insert(
                    r.slot,
                    (t.table.name().to_string(), c.name.clone(), Some(i)),
                );
            }
        }
    }
    m
}

/// The tables at a hook in the kernel's priority order. INPUT is the odd
/// one: filter (priority 0) runs before nat (NF_IP_PRI_NAT_SRC, 100).
fn order(hook: Hook) -> &'static [Table] {
    use Table::*;
    match hook {
        Hook::Prerouting => &[Raw, Mangle, Nat],
        Hook::Input => &[Mangle, Filter, Nat],
        Hook::Forward => &[Mangle, Filter],
        Hook::Output => &[Raw, Mangle, Nat, Filter],
        Hook::Postrouting => &[Mangle, Nat],
    }
}

fn table_only(rs: &Ruleset, t: Table) -> Option<Ruleset> {
    let tr: &TableRules = rs.tables.iter().find(|x| x.table == t)?;
    Some(Ruleset {
        tables: vec![tr.clone()],
    })
}

/// Conntrack's view of a flow: `(proto, src, sport|id, dst, dport|type)`.
type Tuple = (u8, Ipv4Addr, u16, Ipv4Addr, u16);

#[derive(Clone, Debug)]
struct Conn {
    orig: Tuple,
    reply: Tuple,
    seen_reply: bool,
    /// Deleted (a RST was its only reply): no packet finds it any more.
    dead: bool,
    /// TCP: the conntrack state (`tcp_state::*`).
    tcp: Option<u8>,
}

/// The kernel's TCP conntrack states (`enum tcp_conntrack`) and its
/// transition table (`tcp_conntracks`), with its two pseudo-states.
mod tcp_state {
    pub const NO: u8 = 0;
    pub const SS: u8 = 1;
    pub const SR: u8 = 2;
    pub const ES: u8 = 3;
    pub const FW: u8 = 4;
    pub const CW: u8 = 5;
    pub const LA: u8 = 6;
    pub const TW: u8 = 7;
    pub const CL: u8 = 8;
    pub const S2: u8 = 9;
    pub const IV: u8 = 10;
    pub const IG: u8 = 11;

    /// `[dir][index][state]`; index: syn, synack, fin, ack, rst, none.
    pub const TABLE: [[[u8; 10]; 6]; 2] = [
        [
            [SS, SS, IG, IG, IG, IG, IG, SS, SS, S2],
            [IV, IV, SR, IV, IV, IV, IV, IV, IV, SR],
            [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
            [ES, IV, ES, ES, CW, CW, TW, TW, CL, IV],
            [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
            [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
        ],
        [
            [IV, S2, IV, IV, IV, IV, IV, SS, IV, S2],
            [IV, SR, IG, IG, IG, IG, IG, IG, IG, SR],
            [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
            [IV, IG, SR, ES, CW, CW, TW, TW, CL, IG],
            [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
            [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
        ],
    ];

    /// The kernel's `get_conntrack_index`.
    pub fn index(flags: u8) -> usize {
        use super::tcpf::*;
        if flags & RST != 0 {
            4
        } else if flags & SYN != 0 {
            if flags & ACK != 0 { 1 } else { 0 }
        } else if flags & FIN != 0 {
            2
        } else if flags & ACK != 0 {
            3
        } else {
            5
        }
    }

    /// The next state for a packet, `None` if conntrack calls it invalid.
    pub fn next(old: u8, reply: bool, flags: u8) -> Option<u8> {
        match TABLE[reply as usize][index(flags)][old as usize] {
            IV => None,
            IG => Some(old),
            s => Some(s),
        }
    }
}

/// What conntrack makes of a packet before the rules see it.
#[derive(Clone, Debug)]
enum Ct {
    /// INVALID: no entry (bad flags, nothing to relate to, a type that
    /// cannot start a connection).
    Invalid,
    /// A new entry, confirmed if the packet survives.
    Fresh(Conn),
    /// An entry, whether the packet is in the reply direction, and the TCP
    /// state it moves the entry to.
    Known(usize, bool, Option<u8>),
    /// An ICMP error about entry `usize`.
    Related(usize),
}

fn icmp_reply_type(t: u8) -> Option<u8> {
    match t {
        8 => Some(0),
        13 => Some(14),
        15 => Some(16),
        17 => Some(18),
        0 => Some(8),
        14 => Some(13),
        16 => Some(15),
        18 => Some(17),
        _ => None,
    }
}

fn tuples(ip: &Ip) -> (Tuple, Tuple) {
    let p = ip.proto();
    match ip.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (
            (p, ip.src, sport, ip.dst, dport),
            (p, ip.dst, dport, ip.src, sport),
        ),
        L4::Icmp { typ, rest, .. } => {
            let id = (rest >> 16) as u16;
            let rt = icmp_reply_type(typ).unwrap_or(typ);
            (
                (p, ip.src, id, ip.dst, typ as u16),
                (p, ip.dst, id, ip.src, rt as u16),
            )
        }
        _ => ((p, ip.src, 0, ip.dst, 0), (p, ip.dst, 0, ip.src, 0)),
    }
}

/// The kernel's `tcp_valid_flags` (PSH ignored).
fn tcp_flags_valid(f: u8) -> bool {
    let f = f & !tcpf::PSH;
    const S: u8 = tcpf::SYN;
    const A: u8 = tcpf::ACK;
    const R: u8 = tcpf::RST;
    const F: u8 = tcpf::FIN;
    [S, S | A, R, R | A, F | A, A].contains(&f)
}

#[derive(Default)]
struct Model {
    conns: Vec<Conn>,
    counts: HashMap<u32, Count>,
    /// The `Inbound` scope's nft table drops the host's TCP and echo
    /// replies before any rule.
    quiet: bool,
}

impl Model {
    fn lookup(&self, t: &Tuple) -> Option<(usize, bool)> {
        self.conns.iter().enumerate().find_map(|(i, c)| {
            if c.dead {
                None
            } else if &c.orig == t {
                Some((i, false))
            } else if &c.reply == t {
                Some((i, true))
            } else {
                None
            }
        })
    }

    fn classify(&self, ip: &Ip) -> Ct {
        if let L4::Tcp { flags, .. } = ip.l4
            && !tcp_flags_valid(flags)
        {
            return Ct::Invalid;
        }
        if let L4::IcmpError { quoted, .. } = &ip.l4 {
            // The quoted packet's flow, and the error must go to its sender.
            let (t, _) = tuples(quoted);
            return match self.lookup(&t) {
                Some((i, _)) if quoted.src == ip.dst => Ct::Related(i),
                _ => Ct::Invalid,
            };
        }
        let (o, r) = tuples(ip);
        if let Some((i, rev)) = self.lookup(&o) {
            let c = &self.conns[i];
            return match (c.tcp, &ip.l4) {
                (Some(old), L4::Tcp { flags, .. }) => match tcp_state::next(old, rev, *flags) {
                    Some(n) => Ct::Known(i, rev, Some(n)),
                    None => Ct::Invalid,
                },
                _ => Ct::Known(i, rev, None),
            };
        }
        // What may start a connection.
        let ok = match ip.l4 {
            // A SYN, or (tcp_loose) a mid-stream ACK.
            L4::Tcp { flags, .. } => {
                let f = flags & !tcpf::PSH;
                f == tcpf::SYN || f == tcpf::ACK
            }
            L4::Icmp { typ, .. } => matches!(typ, 8 | 13 | 15 | 17),
            _ => true,
        };
        if ok {
            Ct::Fresh(Conn {
                orig: o,
                reply: r,
                seen_reply: false,
                dead: false,
                tcp: match ip.l4 {
                    L4::Tcp { flags, .. } => tcp_state::next(tcp_state::NO, false, flags),
                    _ => None,
                },
            })
        } else {
            Ct::Invalid
        }
    }

    fn state(&self, ct: &Ct) -> u8 {
        match ct {
            Ct::Invalid => ctstate::INVALID,
            Ct::Fresh(_) => ctstate::NEW,
            Ct::Known(i, rev, _) => {
                if *rev || self.conns[*i].seen_reply {
                    ctstate::ESTABLISHED
                } else {
                    ctstate::NEW
                }
            }
            Ct::Related(_) => ctstate::RELATED,
        }
    }

    fn count(&mut self, slots: &[u32], len: u32) {
        for s in slots {
            let c = self.counts.entry(*s).or_default();
            c.packets += 1;
            c.bytes += u64::from(len);
        }
    }

    /// Runs the tables of `hook`; false if the packet was dropped or
    /// rejected (then `rejected` says how).
    /// `raw`: walk the raw table too, seeing this conntrack state (raw
    /// runs before conntrack: callers that model that walk it themselves).
    fn hook(
        &mut self,
        rs: &Ruleset,
        hook: Hook,
        view: &PacketView,
        fresh: bool,
        raw: Option<u8>,
    ) -> Verdict {
        // FIDELITY_EVAL_WHOLE=1: INPUT as `evaluate` walks it with the
        // whole ruleset (its own table order), to show where that differs.
        if hook == Hook::Input && std::env::var_os("FIDELITY_EVAL_WHOLE").is_some() {
            let o = eval::evaluate(rs, hook, view, fresh);
            self.count(&o.counted, view.len);
            return o.verdict;
        }
        for &t in order(hook) {
            if t == Table::Nat && !fresh || t == Table::Raw && raw.is_none() {
                continue;
            }
            let Some(one) = table_only(rs, t) else {
                continue;
            };
            let mut v = view.clone();
            if t == Table::Raw
                && let Some(st) = raw
            {
                v.ctstate = st;
            }
            let o = eval::evaluate(&one, hook, &v, true);
            self.count(&o.counted, view.len);
            if o.verdict != Verdict::Accept {
                return o.verdict;
            }
        }
        Verdict::Accept
    }
}

fn view(ip: &Ip, inp: Option<&str>, out: Option<&str>, state: u8) -> PacketView {
    let (sport, dport, it, ic) = match &ip.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (*sport, *dport, 0, 0),
        L4::Icmp { typ, code, .. } | L4::IcmpError { typ, code, .. } => (0, 0, *typ, *code),
        L4::Raw { .. } => (0, 0, 0, 0),
        L4::Cut { sport, dport, .. } => (*sport, *dport, 0, 0),
    };
    PacketView {
        in_iface: inp.map(String::from),
        out_iface: out.map(String::from),
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto(),
        sport,
        dport,
        icmp_type: it,
        icmp_code: ic,
        ctstate: state,
        len: ip.len() as u32,
    }
}

/// `"10.1.0.1/24"` → (address, prefix length).
fn cidr(s: &str) -> (Ipv4Addr, u32) {
    let (a, l) = s.split_once('/').unwrap();
    (a.parse().unwrap(), l.parse().unwrap())
}

/// The bridge a destination is routed out of: a bridge's subnet, or the
/// outside network behind br-b (`lab::OUTSIDE`).
fn route(dst: Ipv4Addr) -> Option<&'static str> {
    let within = |net: &str| {
        let (addr, len) = cidr(net);
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        u32::from(addr) & mask == u32::from(dst) & mask
    };
    BRIDGES
        .iter()
        .find_map(|(b, a)| within(a).then_some(*b))
        .or_else(|| within(lab::OUTSIDE.0).then_some("br-b"))
}

fn local(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    BRIDGES.iter().map(|(_, a)| cidr(a).0).find(|a| *a == dst)
}

fn host_ip(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Ip {
    Ip {
        src,
        dst,
        ttl: 64,
        id: 0,
        l4,
    }
}

/// An ICMP error from the host about `orig`, from `src`.
fn icmp_error(src: Ipv4Addr, orig: &Ip, typ: u8, code: u8) -> (Ip, u32) {
    let ip = host_ip(
        src,
        orig.src,
        L4::IcmpError {
            typ,
            code,
            quoted: Box::new(orig.clone()),
        },
    );
    // The kernel quotes the whole of a small packet.
    (ip, 28 + orig.len() as u32)
}

/// Whether `icmp_send` answers `orig` with an error: not an ICMP error
/// (nor a type it counts as one: 3-7, 9-12, above 18).
fn icmp_may_answer(orig: &Ip) -> bool {
    match &orig.l4 {
        L4::IcmpError { .. } => false,
        L4::Icmp { typ, .. } => !(matches!(typ, 3..=7 | 9..=12) || *typ > 18),
        _ => true,
    }
}

/// A RST answering `orig` (the stack's and REJECT's, alike).
fn rst_for(orig: &Ip) -> Option<Ip> {
    let L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        payload,
    } = orig.l4
    else {
        return None;
    };
    if flags & tcpf::RST != 0 {
        return None;
    }
    let l4 = if flags & tcpf::ACK != 0 {
        L4::Tcp {
            sport: dport,
            dport: sport,
            seq: ack,
            ack: 0,
            flags: tcpf::RST,
            payload: 0,
        }
    } else {
        let n = u32::from(payload)
            + u32::from(flags & tcpf::SYN != 0)
            + u32::from(flags & tcpf::FIN != 0);
        L4::Tcp {
            sport: dport,
            dport: sport,
            seq: 0,
            ack: seq.wrapping_add(n),
            flags: tcpf::RST | tcpf::ACK,
            payload: 0,
        }
    };
    Some(host_ip(orig.dst, orig.src, l4))
}

/// The address the host answers errors of a forwarded packet from: the
/// one of the bridge facing the packet's sender.
fn facing(src: Ipv4Addr) -> Ipv4Addr {
    let b = route(src).unwrap_or("br-a");
    cidr(BRIDGES.iter().find(|x| x.0 == b).unwrap().1).0
}

/// A packet the host sends: OUTPUT then POSTROUTING. `state`: how
/// conntrack sees it; `reply_of`: the entry it answers (its reply marks the
/// entry seen when conntrack gets to see it).
#[allow(clippy::too_many_arguments)]
fn host_send(
    m: &mut Model,
    rs: &Ruleset,
    ip: &Ip,
    len: u32,
    state: u8,
    reply_of: Option<usize>,
    lo: bool,
) {
    if m.quiet && matches!(ip.l4, L4::Tcp { .. } | L4::Icmp { typ: 0, .. }) {
        return;
    }
    let out = if lo { Some("lo") } else { route(ip.dst) };
    let mut v = view(ip, None, out, state);
    v.len = len;
    // raw OUTPUT comes before conntrack.
    for &t in &[Table::Raw] {
        if let Some(one) = table_only(rs, t) {
            let mut rv = v.clone();
            rv.ctstate = if state == ctstate::RELATED && reply_of.is_none() {
                // An answer conntrack attached to its cause (REJECT's RST).
                state
            } else {
                ctstate::INVALID
            };
            let o = eval::evaluate(&one, Hook::Output, &rv, false);
            m.count(&o.counted, len);
            if o.verdict != Verdict::Accept {
                return;
            }
        }
    }
    if let Some(i) = reply_of {
        let c = &mut m.conns[i];
        match (c.tcp, &ip.l4) {
            // A RST as a connection's only reply deletes it
            // (nf_conntrack_proto_tcp's `nf_ct_kill_acct` without
            // IPS_SEEN_REPLY): what follows starts afresh.
            (Some(_), L4::Tcp { flags, .. }) if flags & tcpf::RST != 0 && !c.seen_reply => {
                c.dead = true;
            }
            (Some(old), L4::Tcp { flags, .. }) => {
                if let Some(n) = tcp_state::next(old, true, *flags) {
                    c.tcp = Some(n);
                    c.seen_reply = true;
                }
            }
            _ => c.seen_reply = true,
        }
    }
    let tracked = state != ctstate::INVALID;
    match m.hook(rs, Hook::Output, &v, false, None) {
        Verdict::Accept => {}
        // REJECT of the host's own packet: the error goes to the host
        // itself, over lo (once: errors are not answered). Not for what
        // the host sends on its ICMP socket (echo replies, errors): that
        // socket is still held (icmp_xmit_lock fails), nothing is sent.
        Verdict::Reject(w) if !lo && ip.proto() != 1 => {
            if let Some((a, alen, st)) = reject_answer(ip, w, ip.src, tracked) {
                host_send(m, rs, &a, alen, st, None, true);
            }
            return;
        }
        _ => return,
    }
    if m.hook(rs, Hook::Postrouting, &v, false, None) != Verdict::Accept || !lo {
        return;
    }
    // Back in through lo, its conntrack entry still attached.
    let mut pv = view(ip, Some("lo"), None, state);
    pv.len = len;
    if m.hook(rs, Hook::Prerouting, &pv, false, Some(state)) == Verdict::Accept {
        m.hook(rs, Hook::Input, &pv, false, None);
    }
}

/// The host stack's answer to a packet delivered to it, and how conntrack
/// sees that answer.
fn stack_answer(ip: &Ip, ct: &Ct, conn: Option<usize>) -> Option<(Ip, u32, u8, Option<usize>)> {
    let tracked = !matches!(ct, Ct::Invalid);
    match &ip.l4 {
        L4::Tcp { .. } => {
            let r = rst_for(ip)?;
            let len = r.len() as u32;
            Some(if tracked {
                (r, len, ctstate::ESTABLISHED, conn)
            } else {
                (r, len, ctstate::INVALID, None)
            })
        }
        L4::Udp { .. } => {
            let (e, len) = icmp_error(ip.dst, ip, 3, 3);
            Some((
                e,
                len,
                if tracked {
                    ctstate::RELATED
                } else {
                    ctstate::INVALID
                },
                None,
            ))
        }
        L4::Icmp {
            typ: 8,
            rest,
            payload,
            ..
        } => {
            let r = host_ip(
                ip.dst,
                ip.src,
                L4::Icmp {
                    typ: 0,
                    code: 0,
                    rest: *rest,
                    payload: *payload,
                },
            );
            let len = r.len() as u32;
            Some((r, len, ctstate::ESTABLISHED, conn))
        }
        L4::Raw { .. } => {
            let (e, len) = icmp_error(ip.dst, ip, 3, 2);
            Some((
                e,
                len,
                if tracked {
                    ctstate::RELATED
                } else {
                    ctstate::INVALID
                },
                None,
            ))
        }
        _ => None,
    }
}

fn reject_answer(ip: &Ip, with: RejectWith, src: Ipv4Addr, tracked: bool) -> Option<(Ip, u32, u8)> {
    let code = match with {
        RejectWith::TcpReset => {
            let r = rst_for(ip)?;
            let len = r.len() as u32;
            // nf_send_reset attaches the RST to the rejected packet's
            // connection: RELATED.
            let st = if tracked {
                ctstate::RELATED
            } else {
                ctstate::INVALID
            };
            return Some((r, len, st));
        }
        RejectWith::IcmpPortUnreachable => 3,
        RejectWith::IcmpNetUnreachable => 0,
        RejectWith::IcmpHostUnreachable => 1,
        RejectWith::IcmpAdminProhibited => 13,
    };
    if !icmp_may_answer(ip) {
        return None;
    }
    let (e, len) = icmp_error(src, ip, 3, code);
    // icmp_send's error carries the (unconfirmed) entry of its cause.
    Some((
        e,
        len,
        if tracked {
            ctstate::RELATED
        } else {
            ctstate::INVALID
        },
    ))
}

/// The kernel's expected counters for `steps` under `rs`. Arrivals are
/// not predicted: they are copied from `kernel`.
pub fn outcome(rs: &Ruleset, steps: &[Step], kernel: &Outcome, scope: Scope) -> Outcome {
    let specs = lab::specs();
    let mut m = Model {
        quiet: scope == Scope::Inbound,
        ..Model::default()
    };
    for s in steps {
        let ip = &s.ip;
        let inb = specs[s.from].bridge;
        let ct = m.classify(ip);
        let state = m.state(&ct);
        let fresh = matches!(ct, Ct::Fresh(_));
        let tracked = !matches!(ct, Ct::Invalid);
        let pre = view(ip, Some(inb), None, state);
        // raw PREROUTING, before conntrack.
        if let Some(one) = table_only(rs, Table::Raw) {
            let mut v = pre.clone();
            v.ctstate = ctstate::INVALID;
            let o = eval::evaluate(&one, Hook::Prerouting, &v, false);
            m.count(&o.counted, pre.len);
            if o.verdict != Verdict::Accept {
                continue;
            }
        }
        if let Ct::Known(i, rev, tcp) = ct {
            m.conns[i].seen_reply |= rev;
            if tcp.is_some() {
                m.conns[i].tcp = tcp;
            }
        }
        let conn = match ct {
            Ct::Known(i, ..) | Ct::Related(i) => Some(i),
            _ => None,
        };
        let v = m.hook(rs, Hook::Prerouting, &pre, fresh, None);
        if v != Verdict::Accept {
            continue;
        }
        let local_dst = local(ip.dst).is_some();
        let out = match s.l2 {
            L2Dst::Container(_) => Some(inb),
            L2Dst::Gateway if local_dst => None,
            L2Dst::Gateway => route(ip.dst),
        };
        let accepted = if local_dst {
            let v = m.hook(
                rs,
                Hook::Input,
                &view(ip, Some(inb), None, state),
                fresh,
                None,
            );
            match v {
                Verdict::Accept => true,
                // See FORWARD below: not through OUTPUT.
                Verdict::Reject(RejectWith::TcpReset) => false,
                Verdict::Reject(w) => {
                    if let Some((a, len, st)) = reject_answer(ip, w, ip.dst, tracked) {
                        host_send(&mut m, rs, &a, len, st, None, false);
                    }
                    false
                }
                Verdict::Drop => false,
            }
        } else if let Some(ob) = out {
            if matches!(s.l2, L2Dst::Gateway) && ip.ttl <= 1 {
                // ip_forward: time exceeded, before FORWARD.
                if icmp_may_answer(ip) {
                    let (e, len) = icmp_error(facing(ip.src), ip, 11, 0);
                    let st = if tracked {
                        ctstate::RELATED
                    } else {
                        ctstate::INVALID
                    };
                    host_send(&mut m, rs, &e, len, st, None, false);
                }
                false
            } else {
                let fv = view(ip, Some(inb), Some(ob), state);
                match m.hook(rs, Hook::Forward, &fv, fresh, None) {
                    Verdict::Accept => {
                        let pv = view(ip, None, Some(ob), state);
                        m.hook(rs, Hook::Postrouting, &pv, fresh, None) == Verdict::Accept
                    }
                    // A tcp-reset for a packet that came in by a bridge port
                    // (here: all of them, routed or bridged) is sent
                    // straight out of that port (nf_send_reset, br_indev),
                    // not through OUTPUT.
                    Verdict::Reject(RejectWith::TcpReset) => false,
                    Verdict::Reject(w) => {
                        if let Some((a, len, st)) = reject_answer(ip, w, facing(ip.src), tracked) {
                            host_send(&mut m, rs, &a, len, st, None, false);
                        }
                        false
                    }
                    Verdict::Drop => false,
                }
            }
        } else {
            false
        };
        let mut conn = conn;
        if accepted && let Ct::Fresh(c) = &ct {
            m.conns.push(c.clone());
            conn = Some(m.conns.len() - 1);
        }
        if accepted
            && local_dst
            && let Some((a, len, st, reply_of)) = stack_answer(ip, &ct, conn)
        {
            host_send(&mut m, rs, &a, len, st, reply_of, false);
        }
    }
    // Counters, in the shape of a save.
    let mut saved = Saved::new();
    let text = text::restore_text(rs);
    let mut parsed = super::counters::parse(&text).unwrap_or_default();
    let where_ = slots(rs);
    for (slot, c) in &m.counts {
        let Some((t, ch, i)) = where_.get(slot) else {
            continue;
        };
        let e: &mut ChainCounts = parsed.entry((t.clone(), ch.clone())).or_default();
        match i {
            None => {
                if let Some(p) = &mut e.policy {
                    p.1 = *c;
                }
            }
            Some(i) => {
                if let Some(r) = e.rules.get_mut(*i) {
                    r.0 = *c;
                }
            }
        }
    }
    saved.append(&mut parsed);
    Outcome {
        text: String::new(),
        counters: saved,
        arrivals: kernel.arrivals.clone(),
        packets: kernel.packets.clone(),
        sent: kernel.sent.clone(),
        built: kernel.built.clone(),
    }
}

/// The chains the `Inbound` scope compares: the built-in PREROUTING, INPUT
/// and FORWARD chains, and the user chains that only they reach.
pub fn inbound_chains(rs: &Ruleset) -> std::collections::HashSet<(String, String)> {
    let mut keep = std::collections::HashSet::new();
    for t in &rs.tables {
        // Which chains each built-in chain reaches, through jumps and gotos.
        let reach = |from: &str| {
            let mut seen = vec![from.to_string()];
            let mut i = 0;
            while i < seen.len() {
                if let Some(c) = t.chains.iter().find(|c| c.name == seen[i]) {
                    for r in &c.rules {
                        if let Target::Jump(n) | Target::Goto(n) = &r.target
                            && !seen.contains(n)
                        {
                            seen.push(n.clone());
                        }
                    }
                }
                i += 1;
            }
            seen
        };
        let outbound: Vec<String> = ["OUTPUT", "POSTROUTING"]
            .iter()
            .flat_map(|b| reach(b))
            .collect();
        for b in ["PREROUTING", "INPUT", "FORWARD"] {
            for c in reach(b) {
                if !outbound.contains(&c) {
                    keep.insert((t.table.name().to_string(), c));
                }
            }
        }
    }
    keep
}

/// netctl's save and parse against iptables: the ruleset was loaded into
/// the kernel as netctl's save wrote it; netctl's parser reads the kernel's
/// `iptables-save` back. Both, written again by netctl's save, must be the
/// same text. `None` when they are; else the lines only one side has.
pub fn round_trip(loaded: &Ruleset, kernel_save: &str) -> Option<Vec<String>> {
    let back = match netctl::rules::parse::parse(kernel_save) {
        Ok(rs) => rs,
        Err(e) => {
            return Some(vec![format!(
                "netctl cannot parse the kernel's iptables-save: {e}"
            )]);
        }
    };
    // iptables-save leaves out `-i +` and `-o +` (they match everything)
    // and, legacy's at least, `! -i +` and `! -o +` too, which match
    // nothing: a save of such a rule restores as another rule. Not
    // netctl's doing: left out of the comparison.
    let norm = |rs: &Ruleset| {
        let mut rs = rs.clone();
        for t in &mut rs.tables {
            for c in &mut t.chains {
                for r in &mut c.rules {
                    for i in [&mut r.matches.in_iface, &mut r.matches.out_iface] {
                        if i.as_ref()
                            .is_some_and(|n| n.value.wildcard && n.value.name.is_empty())
                        {
                            *i = None;
                        }
                    }
                }
            }
        }
        rs
    };
    let (loaded, back) = (norm(loaded), norm(&back));
    let lines = |rs: &Ruleset| -> Vec<String> {
        text::minimal_text(rs)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let (a, b) = (lines(&loaded), lines(&back));
    if a == b {
        return None;
    }
    let mut out = Vec::new();
    for l in &a {
        if !b.contains(l) {
            out.push(format!("loaded only:    {l}"));
        }
    }
    for l in &b {
        if !a.contains(l) {
            out.push(format!("read back only: {l}"));
        }
    }
    if out.is_empty() {
        out.push("same lines, in another order".into());
    }
    Some(out)
}
