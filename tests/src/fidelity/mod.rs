//! The differential fidelity harness: the same ruleset goes into the
//! kernel's iptables (a namespace of its own, the kernel path) and into
//! netctl (its eBPF datapath); the same frames are sent through both; the
//! rules' and policies' counters, and what arrived where, are compared.
//!
//! Cases come from a seed: a random ruleset (`netctl::rules::gen`) and a
//! few interleaved flows between three containers and the host
//! (`scenario`). A mismatch is shrunk — rules, chains and frames deleted
//! while it persists — and printed as iptables-save text and frames.
//!
//! Besides netctl, the kernel's counters are checked against the reference
//! interpreter (`netctl::rules::eval`) driven by a model of conntrack
//! (`predict`): a disagreement there is a bug in the interpreter, the
//! generator, or the harness's model of the kernel, and is reported too.
//!
//! Nothing waits on time: after each frame a marker frame sent the same way
//! on the same CPU proves the host has processed it, and a marker sent by
//! the host to each container proves what reached it (see `lab`).
//!
//! The kernel side is made to be the reference netctl claims to mirror:
//! iptables' legacy backend (every built-in chain exists and counts),
//! conntrack on (a host with any NAT rule), `nf_conntrack_tcp_be_liberal`
//! (netctl tracks TCP without windows), no ICMP rate limits, no IGMP.
//!
//! **NAT cases** (`Config::nat`: `FIDELITY_NAT=1`, `cargo xtask fidelity
//! --nat`, and the CI test `kernel_and_netctl_agree_on_nat`) put SNAT,
//! MASQUERADE, DNAT and REDIRECT into the nat table, mostly, with sparser
//! matches there (`predict::ruleset`), translating to addresses where a
//! translated packet is seen (`nat::pool`: the host's, the containers',
//! service addresses a container receives through a neighbour entry, and
//! `lab::OUTSIDE`, a network routed to cb). Flows also go to the service
//! addresses, and replies answer what arrived (`scenario::resolve`): sent by
//! the container a request reached, to where it came from there, so that a
//! translated connection's replies, and ICMP errors quoting its packets,
//! take the reverse translation. Compared: every counter, the nat chains'
//! included, and arrivals, in which source NAT's choice of a port (when it
//! must change one) is renamed first on each side — the one choice that is
//! the implementation's (`nat`). Left out, and why:
//!
//! * the kernel-vs-reference check for cases with NAT targets: the
//!   reference interpreter and `predict` have no model of NAT (which rule
//!   translates, where the translated packet is routed or re-bridged,
//!   reverse translation of replies and ICMP errors). A NAT case without a
//!   NAT target is checked as any other, with the frames the kernel side
//!   sent. `Report::reference_skipped` counts the others.
//! * nat OUTPUT sees nothing on either side: the host opens no connection
//!   here (it only answers), and the kernel walks nat for a connection's
//!   first packet only. netctl's nat OUTPUT for the host's own connections
//!   is tested in `tests/nat.rs` instead.
//! * address ranges and DNAT/REDIRECT port ranges, unless
//!   `FIDELITY_NAT_RANGES=1` (`--nat-ranges`): a range's addresses that
//!   nothing answers ARP for show a difference of their own (docs/nat.md,
//!   "What the differential harness still finds").
//! * destinations without a route: the kernel's answers to them
//!   (`ip_error`) are rate-limited by `net.ipv4.route.error_cost`, which is
//!   not per namespace, so neither side can be made to answer every time;
//!   the outside network is routed instead.
//!
//! Diagnostics, by environment: `FIDELITY_DUMP=1` prints each case's
//! rules, frames, both sides' counters and connections (the kernel's
//! conntrack table, `netctl conntrack list`); `FIDELITY_IGNORE=nat/INPUT,...`
//! leaves chains out of the comparison (to look past a known difference);
//! `FIDELITY_EVAL_WHOLE=1` predicts INPUT with `evaluate` over the whole
//! ruleset, in its own table order, instead of table by table in the
//! kernel's; `FIDELITY_PAUSE=N:SECS` waits before frame N (timeouts, by
//! hand; `replay` takes it as an argument).

pub mod counters;
pub mod lab;
pub mod nat;
pub mod predict;
pub mod scenario;
pub mod sock;
pub mod text;
pub mod wire;

use std::fmt::{self, Write as _};
use std::time::Instant;

use anyhow::{Context, Result};
use netctl::rules::model::Ruleset;

use crate::Cleanup;
use counters::{Diff, Saved};
use lab::Lab;
use scenario::{L2Dst, Step};
use wire::Ip;

/// What is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every counter, every hook.
    Full,
    /// What comes in from the containers: rules only in PREROUTING, INPUT
    /// and FORWARD (and user chains); the counters of those chains and of
    /// the user chains only they reach (OUTPUT and POSTROUTING, which also
    /// count what the host itself sends, are left out); what arrives
    /// where. The host's own answers that would change conntrack state
    /// (TCP resets, echo replies) are dropped before any rule, on both
    /// sides, by an nft table of the harness.
    Inbound,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "full" => Ok(Scope::Full),
            "inbound" => Ok(Scope::Inbound),
            _ => Err(format!("unknown scope {s:?} (full, inbound)")),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// What is compared.
    pub scope: Scope,
    pub seed: u64,
    pub cases: u32,
    /// The first case's number (to rerun case K alone: first K, cases 1).
    pub first: u32,
    /// Flows per case (each one to six frames).
    pub flows: usize,
    /// Compare with netctl (else: the kernel and the reference only).
    pub netctl: bool,
    /// Check the kernel against the reference interpreter.
    pub reference: bool,
    /// Shrink at most this many mismatches (the rest are counted).
    pub shrink: usize,
    /// Print progress and every case's verdict on stderr.
    pub verbose: bool,
    /// NAT cases: NAT targets in the nat table, translating to addresses
    /// where the translated packets are seen, and replies that answer what
    /// arrived (see `nat` and `scenario`).
    pub nat: bool,
    /// NAT cases with address ranges and DNAT/REDIRECT port ranges (see
    /// the module's notes on what is left out).
    pub nat_ranges: bool,
}

impl Config {
    /// Defaults overridden by `FIDELITY_SCOPE` (full, inbound),
    /// `FIDELITY_SEED`, `FIDELITY_CASES`, `FIDELITY_FIRST`,
    /// `FIDELITY_FLOWS`, `FIDELITY_NETCTL` (0/1), `FIDELITY_REFERENCE`
    /// (0/1), `FIDELITY_SHRINK`, `FIDELITY_VERBOSE` (0/1), `FIDELITY_NAT`
    /// (0/1), `FIDELITY_NAT_RANGES` (0/1).
    pub fn from_env(seed: u64, cases: u32, scope: Scope) -> Config {
        Self::from_env_nat(seed, cases, scope, false)
    }

    /// `from_env`, with NAT cases unless `FIDELITY_NAT=0` (`nat`: the
    /// default).
    pub fn from_env_nat(seed: u64, cases: u32, scope: Scope, nat: bool) -> Config {
        fn var<T: std::str::FromStr>(k: &str) -> Option<T> {
            std::env::var(k).ok().and_then(|v| v.parse().ok())
        }
        let flag = |k: &str, d: bool| var::<u8>(k).map_or(d, |v| v != 0);
        Config {
            scope: var("FIDELITY_SCOPE").unwrap_or(scope),
            seed: var("FIDELITY_SEED").unwrap_or(seed),
            cases: var("FIDELITY_CASES").unwrap_or(cases),
            first: var("FIDELITY_FIRST").unwrap_or(0),
            flows: var("FIDELITY_FLOWS").unwrap_or(4),
            netctl: flag("FIDELITY_NETCTL", true),
            reference: flag("FIDELITY_REFERENCE", true),
            shrink: var("FIDELITY_SHRINK").unwrap_or(3),
            verbose: flag("FIDELITY_VERBOSE", false),
            nat: flag("FIDELITY_NAT", nat),
            nat_ranges: flag("FIDELITY_NAT_RANGES", false),
        }
    }
}

/// One case: a ruleset and the frames sent through it.
#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub index: u32,
    pub ruleset: Ruleset,
    pub steps: Vec<Step>,
}

/// Seed of case `i` of a run.
pub fn case_seed(seed: u64, i: u32) -> u64 {
    let mut r = scenario::Rng::new(seed ^ (u64::from(i) << 32 | u64::from(i)));
    r.next_u64()
}

/// What one side did with a case.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The save text (with counters).
    pub text: String,
    pub counters: Saved,
    /// Per step, per container (in `lab::specs()` order): the summaries of
    /// the IPv4 packets that reached it.
    pub arrivals: Vec<Vec<Vec<String>>>,
    /// The same packets.
    pub packets: Vec<Vec<Vec<Ip>>>,
    /// Each step as sent (a reply as `scenario::resolve` made it).
    pub sent: Vec<Step>,
    /// Each step as built (the case's).
    pub built: Vec<Step>,
}

/// Runs a case on one lab.
/// `pause`: wait this long before frame N (counting from 1), to see what
/// time does to connections.
pub fn run_case(
    lab: &Lab,
    rules: &str,
    steps: &[Step],
    token: &mut u64,
    pause: Option<(usize, std::time::Duration)>,
) -> Result<Outcome> {
    lab.load(rules)?;
    lab.drain();
    let mut next = || {
        *token += 1;
        *token
    };
    // Every container speaks first, so every bridge (the kernel's, the
    // datapath's) knows where each MAC is: nothing is flooded.
    for c in 0..lab.ports.len() {
        lab.settle_from(c, next())?;
    }
    let mut arrivals = Vec::new();
    let mut packets = Vec::new();
    let mut sent = Vec::new();
    // What arrived where, in order: replies are made from it.
    let mut seen: Vec<(usize, Ip)> = Vec::new();
    for i in 0..steps.len() {
        if let Some((n, wait)) = pause
            && n == i + 1
        {
            std::thread::sleep(wait);
        }
        let s = scenario::resolve(steps, i, &seen);
        let spec = &lab.ports[s.from].spec;
        let dst = match s.l2 {
            L2Dst::Gateway => lab.bridge_mac(spec.bridge),
            L2Dst::Container(c) => lab.ports[c].spec.mac,
        };
        lab.inject(s.from, &wire::ether_ip(&dst, &spec.mac, &s.ip))?;
        lab.settle_from(s.from, next())?;
        let mut per = Vec::new();
        let mut per_ip = Vec::new();
        for c in 0..lab.ports.len() {
            let got = lab.arrived_at(c, next())?;
            let mut text: Vec<String> = got.iter().map(|p| p.to_string()).collect();
            text.sort();
            per.push(text);
            seen.extend(got.iter().map(|p| (c, p.clone())));
            per_ip.push(got);
        }
        arrivals.push(per);
        packets.push(per_ip);
        sent.push(s);
    }
    let text = lab.save()?;
    let counters = counters::parse(&text).with_context(|| format!("{}: save", lab.kind.name()))?;
    Ok(Outcome {
        text,
        counters,
        arrivals,
        packets,
        sent,
        built: steps.to_vec(),
    })
}

/// How two outcomes differ, if they do.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    pub counters: Vec<Diff>,
    /// Other differences, one line each.
    pub lines: Vec<String>,
    /// (step, container, left, right)
    pub arrivals: Vec<(usize, usize, Vec<String>, Vec<String>)>,
    /// Each step as each side sent it (replies are made from what
    /// arrived): shown, not a difference of its own.
    pub sent: Vec<(Step, Step)>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.arrivals.is_empty() && self.lines.is_empty()
    }
}

pub fn delta(a: &Outcome, b: &Outcome, rs: &Ruleset, scope: Scope) -> Delta {
    let mut counters = counters::compare(&a.counters, &b.counters);
    // FIDELITY_IGNORE=table/chain,...: counters left out (to look past a
    // known difference).
    if let Ok(v) = std::env::var("FIDELITY_IGNORE") {
        let skip: Vec<&str> = v.split(',').map(str::trim).collect();
        counters.retain(|d| !skip.contains(&format!("{}/{}", d.table, d.chain).as_str()));
    }
    if scope == Scope::Inbound {
        let keep = predict::inbound_chains(rs);
        counters.retain(|d| keep.contains(&(d.table.clone(), d.chain.clone())));
    }
    let mut d = Delta {
        counters,
        ..Delta::default()
    };
    // With NAT targets, source NAT's choices of ports are renamed on each
    // side first (`nat::normalise`); without, nothing would be.
    let (left, right) = if nat::has_nat_target(rs) {
        (
            nat::normalise(&a.built, &a.sent, &a.packets, rs),
            nat::normalise(&b.built, &b.sent, &b.packets, rs),
        )
    } else {
        (a.arrivals.clone(), b.arrivals.clone())
    };
    d.sent = a.sent.iter().cloned().zip(b.sent.iter().cloned()).collect();
    for (i, (x, y)) in left.iter().zip(&right).enumerate() {
        for (c, (p, q)) in x.iter().zip(y).enumerate() {
            if p != q {
                d.arrivals.push((i, c, p.clone(), q.clone()));
            }
        }
    }
    d
}

/// Which comparison found a mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versus {
    /// The kernel against netctl.
    Netctl,
    /// The kernel against the reference interpreter.
    Reference,
    /// The ruleset loaded against what netctl's parser reads back from
    /// the kernel's `iptables-save` (netctl's save and parse against
    /// iptables' own).
    Parser,
}

/// A mismatch, shrunk.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub versus: Versus,
    pub scope: Scope,
    /// A NAT case, and with ranges (for the rerun line).
    pub nat: Option<bool>,
    pub seed: u64,
    pub case: u32,
    pub rules: String,
    pub steps: Vec<Step>,
    pub delta: Delta,
    pub shrunk: bool,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, r) = match self.versus {
            Versus::Netctl => ("kernel", "netctl"),
            Versus::Reference => ("kernel", "reference"),
            Versus::Parser => ("loaded", "read back"),
        };
        writeln!(
            f,
            "=== MISMATCH {l} vs {r}: seed {} case {}{}",
            self.seed,
            self.case,
            if self.shrunk { " (minimal)" } else { "" }
        )?;
        writeln!(
            f,
            "--- rerun: cargo xtask fidelity --seed {} --first {} --cases 1 --scope {}{}{}",
            self.seed,
            self.case,
            match self.scope {
                Scope::Full => "full",
                Scope::Inbound => "inbound",
            },
            match self.nat {
                Some(true) => " --nat --nat-ranges",
                Some(false) => " --nat",
                None => "",
            },
            match self.versus {
                Versus::Netctl => " --no-reference",
                _ => " --kernel-only",
            }
        )?;
        writeln!(
            f,
            "--- ruleset (iptables-save; tables not shown are default):"
        )?;
        for line in self.rules.lines() {
            writeln!(f, "    {line}")?;
        }
        writeln!(f, "--- frames, in order:")?;
        for (i, s) in self.steps.iter().enumerate() {
            // A reply as the left side made it from what arrived there.
            match self.delta.sent.get(i) {
                Some((a, b)) if a != s || b != s => {
                    writeln!(f, "    {}. {a}", i + 1)?;
                    if b != a {
                        writeln!(f, "       ({r} sent: {b})")?;
                    }
                    writeln!(f, "       (built as: {s})")?;
                }
                _ => writeln!(f, "    {}. {s}", i + 1)?,
            }
        }
        writeln!(f, "--- differences ({l} vs {r}):")?;
        for d in &self.delta.counters {
            writeln!(f, "    {d}")?;
        }
        let specs = lab::specs();
        for line in &self.delta.lines {
            writeln!(f, "    {line}")?;
        }
        for (i, c, a, b) in &self.delta.arrivals {
            writeln!(
                f,
                "    after frame {}, at {}: {l} {a:?} vs {r} {b:?}",
                i + 1,
                specs[*c].name
            )?;
        }
        Ok(())
    }
}

/// The result of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// The unique prefix of every object the run made.
    pub prefix: String,
    pub scope: Option<Scope>,
    pub cases: u32,
    pub mismatches: Vec<Mismatch>,
    /// Mismatching cases beyond those shrunk and kept.
    pub more: u32,
    /// Which comparison each of those was.
    pub more_by: Vec<Versus>,
    pub seed: u64,
    pub secs: f64,
    pub coverage: Coverage,
    /// Why a comparison asked for did not run.
    pub skipped: Option<String>,
    /// NAT cases.
    pub nat: bool,
    /// Cases not checked against the reference interpreter: it has no
    /// model of NAT, and they have NAT targets.
    pub reference_skipped: u32,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mismatches {
            writeln!(f, "{m}")?;
        }
        writeln!(f, "{}", self.coverage)?;
        if let Some(why) = &self.skipped {
            writeln!(f, "WARNING: {why}")?;
        }
        let count = |v: Versus| {
            self.mismatches.iter().filter(|m| m.versus == v).count() as u32
                + self.more_by.iter().filter(|x| **x == v).count() as u32
        };
        write!(
            f,
            "fidelity ({:?} scope{}, seed {}): {} cases in {:.1} s; mismatching cases: {} kernel vs netctl, \
             {} kernel vs reference, {} save/parse round trips ({} shown)",
            self.scope.unwrap_or(Scope::Full),
            if self.nat { ", NAT" } else { "" },
            self.seed,
            self.cases,
            self.secs,
            count(Versus::Netctl),
            count(Versus::Reference),
            count(Versus::Parser),
            self.mismatches.len(),
        )?;
        if self.reference_skipped > 0 {
            write!(
                f,
                "; {} cases with NAT targets not checked against the reference (it has no NAT)",
                self.reference_skipped
            )?;
        }
        Ok(())
    }
}

/// How many cases of a run went how deep, on the kernel side (random
/// rulesets drop a lot early: this says what was exercised).
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    pub frames: u64,
    /// Frames that reached another container.
    pub delivered: u64,
    /// Rules (and policies) that counted at least once, of all of them.
    pub rules_hit: u64,
    pub rules: u64,
    /// Packets counted by each built-in chain's policy or rules, by hook.
    pub by_chain: std::collections::BTreeMap<String, u64>,
    /// NAT targets (rules), and those that counted.
    pub nat_rules: u64,
    pub nat_rules_hit: u64,
    /// Frames clients sent that arrived with another address or port.
    pub translated: u64,
    /// Replies sent from what arrived, not as built (`scenario::resolve`).
    pub answered: u64,
    /// Replies that arrived with other addresses or ports than sent.
    pub reversed: u64,
    /// netctl's rule flow cache over the run (`netctl stats`): walks
    /// replayed from it, and walks it missed. Hits are walks whose
    /// agreement with the kernel rests on the cache.
    pub flow_hits: u64,
    pub flow_misses: u64,
}

impl Coverage {
    fn add(&mut self, o: &Outcome, steps: &[Step]) {
        self.frames += steps.len() as u64;
        for (i, s) in o.sent.iter().enumerate() {
            self.answered += u64::from(*s != steps[i]);
            for p in o.packets[i].iter().flatten() {
                if scenario::same_frame(&s.ip, p) && p.tuple() != s.ip.tuple() {
                    if s.answers.is_none() {
                        self.translated += 1;
                    } else {
                        self.reversed += 1;
                    }
                }
            }
        }
        for (i, per) in o.arrivals.iter().enumerate() {
            let from = steps[i].from;
            self.delivered += per
                .iter()
                .enumerate()
                .filter(|(c, got)| *c != from && !got.is_empty())
                .count() as u64;
        }
        for ((t, ch), c) in &o.counters {
            let mut any = 0;
            for (n, text) in &c.rules {
                self.rules += 1;
                self.rules_hit += u64::from(n.packets > 0);
                any += n.packets;
                if ["SNAT", "DNAT", "MASQUERADE", "REDIRECT"]
                    .iter()
                    .any(|t| text.contains(&format!("-j {t}")))
                {
                    self.nat_rules += 1;
                    self.nat_rules_hit += u64::from(n.packets > 0);
                }
            }
            if let Some((_, n)) = &c.policy {
                self.rules += 1;
                self.rules_hit += u64::from(n.packets > 0);
                *self.by_chain.entry(format!("{t}/{ch}")).or_default() += n.packets + any;
            }
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "coverage: {} frames, {} delivered to a container; {}/{} rules and policies counted; built-in chains:",
            self.frames, self.delivered, self.rules_hit, self.rules
        )?;
        for (k, v) in &self.by_chain {
            write!(f, " {k}={v}")?;
        }
        if self.flow_hits + self.flow_misses > 0 {
            write!(
                f,
                "; netctl's rule flow cache: {} hits, {} misses",
                self.flow_hits, self.flow_misses
            )?;
        }
        if self.nat_rules > 0 {
            write!(
                f,
                "; NAT: {}/{} NAT rules counted, {} frames arrived translated, {} replies made \
                 from what arrived, {} replies arrived translated back",
                self.nat_rules_hit, self.nat_rules, self.translated, self.answered, self.reversed
            )?;
        }
        Ok(())
    }
}

/// Builds case `i` of a run.
pub fn make_case(cfg: &Config, i: u32) -> Case {
    let seed = case_seed(cfg.seed, i);
    let ruleset = predict::ruleset(seed, cfg.scope, cfg.nat.then_some(cfg.nat_ranges));
    let mut rng = scenario::Rng::new(seed);
    let pools = predict::pools();
    let flows = 1 + rng.below(cfg.flows.max(1));
    // Client ports and ICMP ids from the case's number: a case is the
    // same whether run alone or in its run.
    let mut serial = i.wrapping_mul(64);
    let steps = scenario::steps(&mut rng, &pools, &mut serial, flows, cfg.nat);
    Case {
        seed,
        index: i,
        ruleset,
        steps,
    }
}

struct Labs {
    scope: Scope,
    kernel: Lab,
    netctl: Option<Lab>,
    token: u64,
    /// The kernel's outcome of the last case run, and netctl's.
    last: Option<Outcome>,
    last_netctl: Option<Outcome>,
    /// `FIDELITY_PAUSE` (`run_case`).
    pause: Option<(usize, std::time::Duration)>,
}

/// `FIDELITY_PAUSE=N:SECS`: wait SECS seconds before frame N.
fn pause_from_env() -> Option<(usize, std::time::Duration)> {
    let v = std::env::var("FIDELITY_PAUSE").ok()?;
    let (n, secs) = v.split_once(':')?;
    Some((
        n.parse().ok()?,
        std::time::Duration::from_secs(secs.parse().ok()?),
    ))
}

impl Labs {
    /// Kernel against netctl: `None` when they agree.
    fn versus_netctl(&mut self, rs: &Ruleset, steps: &[Step]) -> Result<Option<Delta>> {
        let Some(n) = &self.netctl else {
            return Ok(None);
        };
        let rules = text::restore_text(rs);
        let a = run_case(&self.kernel, &rules, steps, &mut self.token, self.pause)?;
        let b = run_case(n, &rules, steps, &mut self.token, self.pause)?;
        if std::env::var_os("FIDELITY_DUMP").is_some() {
            eprintln!("{rules}");
            for (i, s) in steps.iter().enumerate() {
                eprintln!(
                    "{}. {s}\n   kernel: {:?}\n   netctl: {:?}",
                    i + 1,
                    a.arrivals[i],
                    b.arrivals[i]
                );
                for (side, o) in [("kernel", &a), ("netctl", &b)] {
                    if o.sent[i] != *s {
                        eprintln!("   sent by the {side} side as: {}", o.sent[i]);
                    }
                }
            }
            eprintln!("--- kernel:\n{}", self.kernel.save()?);
            eprintln!("--- netctl:\n{}", n.save()?);
            eprintln!("--- kernel connections:\n{}", self.kernel.connections());
            eprintln!("--- netctl connections:\n{}", n.connections());
        }
        let d = delta(&a, &b, rs, self.scope);
        self.last = Some(a);
        self.last_netctl = Some(b);
        Ok((!d.is_empty()).then_some(d))
    }

    /// Kernel against the reference.
    fn versus_reference(&mut self, rs: &Ruleset, steps: &[Step]) -> Result<Option<Delta>> {
        let rules = text::restore_text(rs);
        let a = run_case(&self.kernel, &rules, steps, &mut self.token, self.pause)?;
        if std::env::var_os("FIDELITY_DUMP").is_some() {
            eprintln!("{rules}");
            for (i, s) in steps.iter().enumerate() {
                eprintln!("{}. {s}\n   arrived: {:?}", i + 1, a.arrivals[i]);
            }
            eprintln!("{}", self.kernel.save()?);
        }
        // The frames as the kernel side sent them (replies made from what
        // arrived there).
        let b = predict::outcome(rs, &a.sent, &a, self.scope);
        let d = delta(&a, &b, rs, self.scope);
        self.last = Some(a);
        Ok((!d.is_empty()).then_some(d))
    }

    fn check(&mut self, versus: Versus, rs: &Ruleset, steps: &[Step]) -> Result<Option<Delta>> {
        match versus {
            Versus::Netctl => self.versus_netctl(rs, steps),
            Versus::Reference => self.versus_reference(rs, steps),
            // Checked once per case, not shrunk.
            Versus::Parser => Ok(None),
        }
    }
}

/// Greedy shrinking: drop frames, chains and rules one at a time, keeping
/// each deletion after which the case still mismatches; repeat until
/// nothing more can go.
fn shrink(
    labs: &mut Labs,
    versus: Versus,
    case: &Case,
    first: Delta,
) -> Result<(Ruleset, Vec<Step>, Delta)> {
    let mut rs = case.ruleset.clone();
    let mut steps = case.steps.clone();
    let mut last = first;
    loop {
        let mut progress = false;
        // Frames, from the last.
        let mut i = steps.len();
        while i > 0 {
            i -= 1;
            if steps.len() == 1 {
                break;
            }
            let mut s = steps.clone();
            s.remove(i);
            if let Some(d) = labs.check(versus, &rs, &s)? {
                (steps, last, progress) = (s, d, true);
            }
        }
        // Candidate rulesets, each one deletion away.
        for cand in predict::smaller(&rs) {
            if let Some(d) = labs.check(versus, &cand, &steps)? {
                (rs, last, progress) = (cand, d, true);
                break;
            }
        }
        if !progress {
            return Ok((rs, steps, last));
        }
    }
}

/// Runs a whole fidelity campaign. Builds its namespaces under a unique
/// prefix and removes them at the end, also on panic.
pub fn run(cfg: &Config) -> Result<Report> {
    let t0 = Instant::now();
    let prefix = crate::unique("fid");
    let _cleanup = Cleanup::new(&prefix);
    // One CPU for everything the harness sends, so frames queue in order.
    let old = sock::pin_to_first_cpu()?;
    let mut cfg = cfg.clone();
    let mut skipped = None;
    if cfg.netctl && !lab::netctl_has_rules() {
        let why = "the netctl binary has no `rules` command: netctl side skipped, \
                   the kernel is checked against the reference only";
        eprintln!("fidelity: WARNING: {why}");
        skipped = Some(why.to_string());
        cfg.netctl = false;
    }
    let cfg = &cfg;
    let res = (|| -> Result<Report> {
        let kernel = Lab::kernel(&prefix, cfg.scope).context("kernel side")?;
        let netctl = if cfg.netctl {
            Some(Lab::netctl(&prefix, cfg.scope).context("netctl side")?)
        } else {
            None
        };
        let mut labs = Labs {
            scope: cfg.scope,
            kernel,
            netctl,
            token: 0,
            last: None,
            last_netctl: None,
            pause: pause_from_env(),
        };
        let mut report = Report {
            prefix: prefix.clone(),
            skipped: skipped.clone(),
            scope: Some(cfg.scope),
            seed: cfg.seed,
            nat: cfg.nat,
            ..Report::default()
        };
        for i in cfg.first..cfg.first + cfg.cases {
            let case = make_case(cfg, i);
            let mut kinds = Vec::new();
            if cfg.netctl {
                kinds.push(Versus::Netctl);
            }
            if cfg.reference {
                if nat::has_nat_target(&case.ruleset) {
                    report.reference_skipped += 1;
                } else {
                    kinds.push(Versus::Reference);
                }
            }
            for (k, v) in kinds.into_iter().enumerate() {
                let found = labs
                    .check(v, &case.ruleset, &case.steps)
                    .with_context(|| format!("seed {} case {i}", cfg.seed))?;
                if k == 0
                    && let Some(o) = &labs.last
                {
                    report.coverage.add(o, &case.steps);
                    if let Some(lines) = predict::round_trip(&case.ruleset, &o.text) {
                        let m = Mismatch {
                            versus: Versus::Parser,
                            scope: cfg.scope,
                            nat: cfg.nat.then_some(cfg.nat_ranges),
                            seed: cfg.seed,
                            case: i,
                            rules: text::minimal_text(&case.ruleset),
                            steps: Vec::new(),
                            delta: Delta {
                                lines,
                                ..Delta::default()
                            },
                            shrunk: false,
                        };
                        if report.mismatches.len() < cfg.shrink {
                            report.mismatches.push(m);
                        } else {
                            report.more += 1;
                            report.more_by.push(Versus::Parser);
                        }
                    }
                }
                if cfg.verbose {
                    eprintln!(
                        "case {i} {v:?}: {}",
                        if found.is_some() { "MISMATCH" } else { "ok" }
                    );
                }
                let Some(d) = found else { continue };
                if report.mismatches.len() >= cfg.shrink {
                    report.more += 1;
                    report.more_by.push(v);
                    continue;
                }
                let (rs, steps, d, shrunk) = match shrink(&mut labs, v, &case, d.clone()) {
                    Ok((rs, s, d)) => (rs, s, d, true),
                    Err(e) => {
                        eprintln!("fidelity: shrinking case {i} failed: {e:#}");
                        (case.ruleset.clone(), case.steps.clone(), d, false)
                    }
                };
                let m = Mismatch {
                    versus: v,
                    scope: cfg.scope,
                    nat: cfg.nat.then_some(cfg.nat_ranges),
                    seed: cfg.seed,
                    case: i,
                    rules: text::minimal_text(&rs),
                    steps,
                    delta: d,
                    shrunk,
                };
                if cfg.verbose {
                    eprintln!("{m}");
                }
                report.mismatches.push(m);
            }
            report.cases += 1;
        }
        report.secs = t0.elapsed().as_secs_f64();
        if let Some(topo) = labs.netctl.as_ref().and_then(|l| l.topo.as_deref()) {
            let f = &crate::stats(topo)["flow_cache"];
            report.coverage.flow_hits = f["hit"].as_u64().unwrap_or(0);
            report.coverage.flow_misses = f["miss"].as_u64().unwrap_or(0);
        }
        Ok(report)
    })();
    sock::set_affinity(&old)?;
    res
}

/// Runs one ruleset and its frames through both sides, as a case of a
/// run (to study a shrunk mismatch by hand: `FIDELITY_DUMP=1` prints both
/// sides' counters and connections), waiting before a frame if asked
/// (`run_case`). Returns the kernel's outcome, netctl's, and how they
/// differ.
pub fn replay(
    rs: &Ruleset,
    steps: &[Step],
    scope: Scope,
    pause: Option<(usize, std::time::Duration)>,
) -> Result<(Outcome, Outcome, Delta)> {
    let prefix = crate::unique("fidr");
    let _cleanup = Cleanup::new(&prefix);
    let old = sock::pin_to_first_cpu()?;
    let res = (|| {
        let mut labs = Labs {
            scope,
            kernel: Lab::kernel(&prefix, scope)?,
            netctl: Some(Lab::netctl(&prefix, scope)?),
            token: 0,
            last: None,
            last_netctl: None,
            pause,
        };
        let d = labs.versus_netctl(rs, steps)?.unwrap_or_default();
        Ok((
            labs.last.take().unwrap(),
            labs.last_netctl.take().unwrap(),
            d,
        ))
    })();
    sock::set_affinity(&old)?;
    res
}

/// A one-line description of the layout, for reports.
pub fn layout() -> String {
    let mut s = String::new();
    for (b, a) in lab::BRIDGES {
        let _ = write!(s, "{b} {a}; ");
    }
    for c in lab::specs() {
        let _ = write!(
            s,
            "{} {} on {} (port {}); ",
            c.name, c.ip, c.bridge, c.host_if
        );
    }
    s
}
