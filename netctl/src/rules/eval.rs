//! The reference interpreter: what netfilter does with one packet at one
//! hook, written as directly as iptables' semantics read, with no concern for
//! speed. The compiler's output is checked against it (`compile::simulate`
//! must agree with `evaluate` on every packet), and so is the real datapath.
//!
//! It assumes a ruleset iptables would load: no jump loops (a loop panics).
//! A jump to a chain that does not exist behaves as a jump to an empty chain;
//! the compiler refuses both.

use super::model::{
    Chain, Hook, IcmpType, Iface, Matches, Multiport, MultiportKind, Nat, Neg, PacketView, Policy,
    RejectWith, Rule, Ruleset, Table, TableRules, Target, proto,
};

/// The final word on a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Reject(RejectWith),
}

/// What a packet went through at a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Counter slots that counted the packet, in the order they did: every
    /// rule that matched (jumps, LOG and target-less rules included) and the
    /// policy, if the packet reached one.
    pub counted: Vec<u32>,
    /// LOG prefixes, in the order the rules fired.
    pub logs: Vec<String>,
    /// The NAT target the nat table's walk ended in, if it ended in one:
    /// what the kernel would bind the connection to (the packet itself is
    /// judged as it came; the translation is the datapath's business).
    pub nat: Option<Nat>,
}

impl Outcome {
    pub(crate) fn accept() -> Outcome {
        Outcome {
            verdict: Verdict::Accept,
            counted: Vec::new(),
            logs: Vec::new(),
            nat: None,
        }
    }
}

/// Jumps nested deeper than this can only come from a loop, which iptables
/// refuses to load (the kernel's own jump stack is far smaller).
const MAX_DEPTH: usize = 1024;

/// Runs `pkt` through the tables at `hook` in the kernel's order
/// (`Hook::tables`; nat only for the first packet of a connection, as
/// conntrack does). A NAT target ends the nat table's walk as ACCEPT does
/// and is recorded in `Outcome::nat`. This interpreter does not translate:
/// the tables after nat see the packet as it came, where the kernel's
/// filter OUTPUT sees it after nat OUTPUT's DNAT or REDIRECT (the only hook
/// with a table after nat).
pub fn evaluate(rs: &Ruleset, hook: Hook, pkt: &PacketView, first_of_conn: bool) -> Outcome {
    let mut out = Outcome::accept();
    for &table in hook.tables() {
        if table == Table::Nat && !first_of_conn {
            continue;
        }
        let Some(tr) = rs.tables.iter().find(|t| t.table == table) else {
            continue;
        };
        let Some(builtin) = builtin_chain(tr, hook) else {
            continue;
        };
        match run_table(tr, builtin, pkt, &mut out) {
            Verdict::Accept => {}
            v => {
                out.verdict = v;
                return out;
            }
        }
    }
    out
}

/// The built-in chain of `hook` in a table, if the table has it.
pub(crate) fn builtin_chain(tr: &TableRules, hook: Hook) -> Option<&Chain> {
    tr.chains
        .iter()
        .find(|c| c.policy.is_some() && c.name == hook.chain_name())
}

/// One table's traversal; ACCEPT here only ends this table.
fn run_table(tr: &TableRules, builtin: &Chain, pkt: &PacketView, out: &mut Outcome) -> Verdict {
    // Return points of the jumps taken; a goto pushes none, so RETURN from
    // a goto'd chain goes back to whoever called the chain that went there.
    let mut stack: Vec<(&Chain, usize)> = Vec::new();
    let mut chain = builtin;
    let mut pos = 0;
    loop {
        let Some(rule) = chain.rules.get(pos) else {
            // Falling off the end: a user chain returns, a built-in chain
            // (or a goto'd chain with nothing to return to) ends in the policy.
            match stack.pop() {
                Some((c, p)) => (chain, pos) = (c, p),
                None => return policy(builtin, out),
            }
            continue;
        };
        pos += 1;
        if !rule_matches(rule, pkt) {
            continue;
        }
        out.counted.push(rule.slot);
        match &rule.target {
            Target::None => {}
            Target::Log { prefix } => out.logs.push(prefix.clone()),
            Target::Accept => return Verdict::Accept,
            // NF_ACCEPT for the nat table, with the binding chosen.
            Target::Nat(nat) => {
                out.nat = Some(*nat);
                return Verdict::Accept;
            }
            Target::Drop => return Verdict::Drop,
            Target::Reject(with) => return Verdict::Reject(*with),
            Target::Return => match stack.pop() {
                Some((c, p)) => (chain, pos) = (c, p),
                None => return policy(builtin, out),
            },
            Target::Jump(name) | Target::Goto(name) => {
                let Some(callee) = tr.chains.iter().find(|c| &c.name == name) else {
                    // Nothing to run: a jump falls through, a goto returns.
                    if matches!(rule.target, Target::Goto(_)) {
                        match stack.pop() {
                            Some((c, p)) => (chain, pos) = (c, p),
                            None => return policy(builtin, out),
                        }
                    }
                    continue;
                };
                if matches!(rule.target, Target::Jump(_)) {
                    stack.push((chain, pos));
                    assert!(
                        stack.len() <= MAX_DEPTH,
                        "jump loop through chain {name} in table {}",
                        tr.table
                    );
                }
                (chain, pos) = (callee, 0);
            }
        }
    }
}

fn policy(builtin: &Chain, out: &mut Outcome) -> Verdict {
    out.counted.push(builtin.policy_slot);
    match builtin.policy {
        Some(Policy::Drop) => Verdict::Drop,
        // A built-in chain without a policy is malformed; ACCEPT is what a
        // missing chain would do.
        Some(Policy::Accept) | None => Verdict::Accept,
    }
}

fn rule_matches(rule: &Rule, pkt: &PacketView) -> bool {
    matches(&rule.matches, pkt)
}

/// Whether every match of a rule holds for the packet.
pub fn matches(m: &Matches, pkt: &PacketView) -> bool {
    let keys = PacketKeys::of(pkt);
    holds(&m.in_iface, |i| iface_matches(i, pkt.in_iface.as_deref()))
        && holds(&m.out_iface, |i| iface_matches(i, pkt.out_iface.as_deref()))
        && holds(&m.src, |n| n.contains(&pkt.src))
        && holds(&m.dst, |n| n.contains(&pkt.dst))
        && proto_matches(&m.proto, pkt.proto)
        && holds(&m.sport, |r| r.contains(keys.sport))
        && holds(&m.dport, |r| r.contains(keys.dport))
        && holds(&m.multiport, |mp| {
            multiport_matches(mp, keys.sport, keys.dport)
        })
        && holds(&m.icmp, |t| {
            icmp_matches(*t, keys.icmp_type, keys.icmp_code)
        })
        && holds(&m.ctstate, |&mask| pkt.ctstate & mask != 0)
}

fn holds<T>(m: &Option<Neg<T>>, f: impl FnOnce(&T) -> bool) -> bool {
    match m {
        None => true,
        Some(n) => f(&n.value) != n.negated,
    }
}

/// `-p 0` is `-p all`, which the kernel does not test, even negated.
pub(crate) fn proto_matches(m: &Option<Neg<u8>>, proto: u8) -> bool {
    match m {
        Some(n) if n.value != 0 => (n.value == proto) != n.negated,
        _ => true,
    }
}

/// An absent interface (no input device in OUTPUT, no output device in
/// PREROUTING) has the empty name, which only the bare `+` matches.
pub(crate) fn iface_matches(i: &Iface, name: Option<&str>) -> bool {
    i.matches(name.unwrap_or(""))
}

pub(crate) fn multiport_matches(mp: &Multiport, sport: u16, dport: u16) -> bool {
    let has = |p: u16| mp.ports.iter().any(|r| r.contains(p));
    match mp.kind {
        MultiportKind::Source => has(sport),
        MultiportKind::Destination => has(dport),
        MultiportKind::Either => has(sport) || has(dport),
    }
}

/// The kernel's `icmp_type_code_match`: type 0xFF ("any") matches every
/// type and code, whatever code range it carries.
pub(crate) fn icmp_matches(t: IcmpType, typ: u8, code: u8) -> bool {
    t.typ == 0xff || (t.typ == typ && t.code_lo <= code && code <= t.code_hi)
}

/// The header fields as the matches read them: ports only exist for tcp and
/// udp, ICMP type and code only for ICMP; elsewhere they read as 0, as the
/// datapath's classifier keys do.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PacketKeys {
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl PacketKeys {
    pub fn of(pkt: &PacketView) -> PacketKeys {
        let ports = pkt.proto == proto::TCP || pkt.proto == proto::UDP;
        let icmp = pkt.proto == proto::ICMP;
        PacketKeys {
            sport: if ports { pkt.sport } else { 0 },
            dport: if ports { pkt.dport } else { 0 },
            icmp_type: if icmp { pkt.icmp_type } else { 0 },
            icmp_code: if icmp { pkt.icmp_code } else { 0 },
        }
    }
}

/// A tcp packet with every other field set to something harmless, for tests
/// to adjust.
#[cfg(test)]
pub(crate) fn packet(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> PacketView {
    PacketView {
        in_iface: None,
        out_iface: None,
        src,
        dst,
        proto: proto::TCP,
        sport: 40000,
        dport: 80,
        icmp_type: 0,
        icmp_code: 0,
        ctstate: super::model::ctstate::NEW,
        len: 60,
    }
}

/// Each semantic corner, checked against the reference and, through
/// `testkit::check`, against the compiled maps. Slots are line numbers.
#[cfg(test)]
mod tests {
    use super::Verdict::{Accept, Drop, Reject};
    use super::*;
    use crate::rules::compile::testkit::{Pkt, check, outcome, outcome_nat, ruleset};
    use crate::rules::model::ctstate::{ESTABLISHED, INVALID, NEW, RELATED, UNTRACKED};
    use crate::rules::model::{NatRange, PortRange};

    fn web() -> Pkt {
        Pkt::tcp("10.0.0.1", 40000, "10.0.0.2", 80)
            .i("eth0")
            .o("veth1a")
    }

    #[test]
    fn empty_ruleset_accepts_uncounted() {
        let rs = ruleset("");
        check(&rs, Hook::Forward, &web(), true, &outcome(Accept, &[], &[]));
        let rs = ruleset("*raw");
        check(&rs, Hook::Forward, &web(), true, &outcome(Accept, &[], &[]));
    }

    #[test]
    fn policies_are_counted() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             :FORWARD DROP",
        );
        check(&rs, Hook::Forward, &web(), true, &outcome(Drop, &[3], &[]));
        check(&rs, Hook::Input, &web(), true, &outcome(Accept, &[2], &[]));
        // OUTPUT's policy was never declared: slot 0.
        check(&rs, Hook::Output, &web(), true, &outcome(Accept, &[0], &[]));
    }

    #[test]
    fn counting_and_log_rules_go_on() {
        let rs = ruleset(
            r#"*filter
             :FORWARD DROP
             -A FORWARD -s 10.0.0.0/8
             -A FORWARD -j LOG --log-prefix "fw: "
             -A FORWARD -d 10.0.0.3 -j LOG --log-prefix "never"
             -A FORWARD -j LOG
             -A FORWARD -p tcp --dport 80 -j ACCEPT"#,
        );
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Accept, &[3, 4, 6, 7], &["fw: ", ""]),
        );
        let ssh = Pkt::tcp("10.0.0.1", 40000, "10.0.0.2", 22);
        check(
            &rs,
            Hook::Forward,
            &ssh,
            true,
            &outcome(Drop, &[3, 4, 6, 2], &["fw: ", ""]),
        );
    }

    #[test]
    fn accept_ends_only_its_table() {
        let rs = ruleset(
            "*raw
             :PREROUTING ACCEPT
             -A PREROUTING -j ACCEPT
             -A PREROUTING -j DROP
             *mangle
             :PREROUTING DROP
             -A PREROUTING -j ACCEPT
             *filter
             :FORWARD ACCEPT
             -A FORWARD -s 10.0.0.1 -j DROP
             -A FORWARD -j ACCEPT",
        );
        check(
            &rs,
            Hook::Prerouting,
            &web(),
            true,
            &outcome(Accept, &[3, 7], &[]),
        );
        // mangle's FORWARD chain is there (with no rules): its policy counts.
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Drop, &[0, 10], &[]),
        );
    }

    #[test]
    fn raw_accept_then_filter_drop() {
        let rs = ruleset(
            "*raw
             :OUTPUT ACCEPT
             -A OUTPUT -j ACCEPT
             *filter
             :OUTPUT ACCEPT
             -A OUTPUT -p tcp -j DROP",
        );
        let p = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 2).o("eth0");
        check(&rs, Hook::Output, &p, true, &outcome(Drop, &[3, 6], &[]));
    }

    #[test]
    fn drop_and_reject_end_everything() {
        let rs = ruleset(
            "*mangle
             :FORWARD ACCEPT
             -A FORWARD -p udp -j DROP
             *filter
             :FORWARD ACCEPT
             -A FORWARD -p tcp -j REJECT --reject-with tcp-reset
             -A FORWARD -j REJECT",
        );
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(&rs, Hook::Forward, &udp, true, &outcome(Drop, &[3], &[]));
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Reject(RejectWith::TcpReset), &[2, 6], &[]),
        );
        let ping = Pkt::icmp("10.0.0.1", "10.0.0.2", 8, 0);
        let port_unreach = Reject(RejectWith::IcmpPortUnreachable);
        check(
            &rs,
            Hook::Forward,
            &ping,
            true,
            &outcome(port_unreach, &[2, 7], &[]),
        );
    }

    #[test]
    fn jump_returns_to_the_next_rule() {
        let rs = ruleset(
            "*filter
             :FORWARD DROP
             :A -
             -A FORWARD -p tcp -j A
             -A FORWARD -s 10.0.0.1
             -A A -d 10.0.0.9 -j ACCEPT
             -A A -p tcp --dport 80 -j RETURN
             -A A -j DROP",
        );
        // RETURN: back to rule 6, then the policy.
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Drop, &[4, 7, 5, 2], &[]),
        );
        let ssh = Pkt::tcp("10.0.0.1", 4, "10.0.0.2", 22);
        check(&rs, Hook::Forward, &ssh, true, &outcome(Drop, &[4, 8], &[]));
        let udp = Pkt::udp("10.0.0.1", 4, "10.0.0.9", 22);
        check(&rs, Hook::Forward, &udp, true, &outcome(Drop, &[5, 2], &[]));
    }

    #[test]
    fn falling_off_a_user_chain_returns() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             :A -
             -A INPUT -j A
             -A INPUT -j DROP
             -A A -s 192.168.0.0/16 -j ACCEPT",
        );
        check(&rs, Hook::Input, &web(), true, &outcome(Drop, &[4, 5], &[]));
        let lan = Pkt::tcp("192.168.3.4", 1, "10.0.0.2", 80);
        check(&rs, Hook::Input, &lan, true, &outcome(Accept, &[4, 6], &[]));
    }

    #[test]
    fn nested_jumps_and_returns() {
        let rs = ruleset(
            "*filter
             :FORWARD ACCEPT
             :A -
             :B -
             -A FORWARD -j A
             -A FORWARD -j DROP
             -A A -j B
             -A A -p udp -j RETURN
             -A A -j ACCEPT
             -A B -p tcp -j RETURN
             -A B -j LOG --log-prefix B",
        );
        // tcp: B returns to A, A accepts.
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Accept, &[5, 7, 10, 9], &[]),
        );
        // udp: B logs and falls off, A returns, FORWARD drops.
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(
            &rs,
            Hook::Forward,
            &udp,
            true,
            &outcome(Drop, &[5, 7, 11, 8, 6], &["B"]),
        );
    }

    #[test]
    fn goto_then_return_skips_the_rest_of_the_caller() {
        let rs = ruleset(
            "*filter
             :FORWARD ACCEPT
             :A -
             :B -
             -A FORWARD -j A
             -A FORWARD -j DROP
             -A A -p tcp -g B
             -A A -j ACCEPT
             -A B -d 10.0.0.2 -j RETURN
             -A B -j REJECT",
        );
        // B's RETURN goes back past A (which went there) to FORWARD.
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Drop, &[5, 7, 9, 6], &[]),
        );
        let other = Pkt::tcp("10.0.0.1", 1, "10.0.0.3", 80);
        let rej = Reject(RejectWith::IcmpPortUnreachable);
        check(
            &rs,
            Hook::Forward,
            &other,
            true,
            &outcome(rej, &[5, 7, 10], &[]),
        );
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(
            &rs,
            Hook::Forward,
            &udp,
            true,
            &outcome(Accept, &[5, 8], &[]),
        );
    }

    #[test]
    fn falling_off_a_goto_chain_returns_to_the_callers_caller() {
        let rs = ruleset(
            "*filter
             :FORWARD ACCEPT
             :A -
             :B -
             -A FORWARD -j A
             -A FORWARD -j DROP
             -A A -g B
             -A A -j ACCEPT
             -A B -s 10.9.9.9 -j ACCEPT",
        );
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Drop, &[5, 7, 6], &[]),
        );
    }

    #[test]
    fn goto_from_a_builtin_chain_ends_in_its_policy() {
        let rs = ruleset(
            "*filter
             :INPUT DROP
             :A -
             -A INPUT -p tcp -g A
             -A INPUT -j ACCEPT
             -A A -d 10.0.0.9 -j ACCEPT
             -A A -p tcp --dport 22 -j RETURN",
        );
        check(&rs, Hook::Input, &web(), true, &outcome(Drop, &[4, 2], &[]));
        let ssh = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 22);
        check(
            &rs,
            Hook::Input,
            &ssh,
            true,
            &outcome(Drop, &[4, 7, 2], &[]),
        );
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(&rs, Hook::Input, &udp, true, &outcome(Accept, &[5], &[]));
    }

    #[test]
    fn return_in_a_builtin_chain_is_the_policy() {
        let rs = ruleset(
            "*filter
             :OUTPUT DROP
             -A OUTPUT -p tcp -j RETURN
             -A OUTPUT -j ACCEPT",
        );
        check(
            &rs,
            Hook::Output,
            &web(),
            true,
            &outcome(Drop, &[3, 2], &[]),
        );
    }

    #[test]
    fn the_same_chain_called_twice_is_two_copies() {
        let rs = ruleset(
            "*filter
             :FORWARD ACCEPT
             :A -
             :B -
             -A FORWARD -p tcp -j A
             -A FORWARD -j B
             -A FORWARD -j A
             -A A -j B
             -A B -d 10.0.0.2 -j LOG --log-prefix b
             -A B -d 10.0.0.9 -j DROP",
        );
        let logs = ["b", "b", "b"];
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Accept, &[5, 8, 9, 6, 9, 7, 8, 9, 2], &logs),
        );
    }

    #[test]
    fn negations() {
        let rs = ruleset(
            "*filter
             :FORWARD ACCEPT
             -A FORWARD ! -s 10.0.0.0/24 -j LOG --log-prefix src
             -A FORWARD ! -i eth0 -j LOG --log-prefix in
             -A FORWARD ! -p tcp -j LOG --log-prefix proto
             -A FORWARD -p tcp ! --dport 80 -j LOG --log-prefix dport
             -A FORWARD -p tcp ! --sport 1:1023 -j LOG --log-prefix sport
             -A FORWARD ! -o veth+ -j LOG --log-prefix out",
        );
        check(
            &rs,
            Hook::Forward,
            &web(),
            true,
            &outcome(Accept, &[7, 2], &["sport"]),
        );
        let p = Pkt::udp("10.1.0.1", 53, "10.0.0.2", 80).i("eth1").o("br0");
        let logs = ["src", "in", "proto", "out"];
        check(
            &rs,
            Hook::Forward,
            &p,
            true,
            &outcome(Accept, &[3, 4, 5, 8, 2], &logs),
        );
    }

    #[test]
    fn interface_wildcards() {
        let rs = ruleset(
            "*filter
             :FORWARD ACCEPT
             -A FORWARD -i veth+ -j LOG --log-prefix veth+
             -A FORWARD -i veth1a -j LOG --log-prefix veth1a
             -A FORWARD -i veth1a+ -j LOG --log-prefix veth1a+
             -A FORWARD -i + -j LOG --log-prefix any
             -A FORWARD ! -o + -j LOG --log-prefix no-out
             -A FORWARD -o eth+ -j LOG --log-prefix eth+",
        );
        let p = web().i("veth1a").o("eth1");
        let logs = ["veth+", "veth1a", "veth1a+", "any", "eth+"];
        check(
            &rs,
            Hook::Forward,
            &p,
            true,
            &outcome(Accept, &[3, 4, 5, 6, 8, 2], &logs),
        );
        // No devices at all: only the bare `+` matches the empty name.
        let mut p = web();
        (p.0.in_iface, p.0.out_iface) = (None, None);
        check(
            &rs,
            Hook::Forward,
            &p,
            true,
            &outcome(Accept, &[6, 2], &["any"]),
        );
        // A device the compiler was not told of is a name nothing else matches.
        let p = web().i("wg0").o("wg1");
        check(
            &rs,
            Hook::Forward,
            &p,
            true,
            &outcome(Accept, &[6, 2], &["any"]),
        );
    }

    #[test]
    fn addresses_and_prefixes() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             -A INPUT -s 10.0.0.0/8 -d 10.0.0.2 -j LOG --log-prefix a
             -A INPUT -s 10.0.0.1/31 -j LOG --log-prefix b
             -A INPUT -s 10.0.0.0/32 -j LOG --log-prefix c
             -A INPUT -s 0.0.0.0/0 -j LOG --log-prefix d
             -A INPUT ! -s 0.0.0.0/0 -j LOG --log-prefix e
             -A INPUT -s 10.0.0.5/16 -j LOG --log-prefix f",
        );
        check(
            &rs,
            Hook::Input,
            &web(),
            true,
            &outcome(Accept, &[3, 4, 6, 8, 2], &["a", "b", "d", "f"]),
        );
    }

    #[test]
    fn multiport_either_matches_either_port_once() {
        let rs = ruleset(
            "*filter
             :FORWARD DROP
             -A FORWARD -p tcp -m multiport --ports 80,443
             -A FORWARD -p tcp -m multiport ! --ports 22,8000:8100 -j LOG --log-prefix not
             -A FORWARD -p tcp -m multiport --sports 80 -j LOG --log-prefix s
             -A FORWARD -p tcp -m multiport --dports 1000:2000,80 -j ACCEPT",
        );
        // Both ports in the list: counted once.
        let both = Pkt::tcp("10.0.0.1", 443, "10.0.0.2", 80);
        check(
            &rs,
            Hook::Forward,
            &both,
            true,
            &outcome(Accept, &[3, 4, 6], &["not"]),
        );
        let by_sport = Pkt::tcp("10.0.0.1", 80, "10.0.0.2", 22);
        check(
            &rs,
            Hook::Forward,
            &by_sport,
            true,
            &outcome(Drop, &[3, 5, 2], &["s"]),
        );
        let by_dport = Pkt::tcp("10.0.0.1", 8050, "10.0.0.2", 443);
        check(
            &rs,
            Hook::Forward,
            &by_dport,
            true,
            &outcome(Drop, &[3, 2], &[]),
        );
        let neither = Pkt::tcp("10.0.0.1", 5, "10.0.0.2", 1500);
        check(
            &rs,
            Hook::Forward,
            &neither,
            true,
            &outcome(Accept, &[4, 6], &["not"]),
        );
    }

    #[test]
    fn jump_with_multiport_either_runs_the_chain_once() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             :A -
             -A INPUT -p tcp -m multiport --ports 80,443 -j A
             -A A -j LOG --log-prefix a
             -A A -p tcp --sport 80 -j RETURN
             -A A -j DROP",
        );
        let both = Pkt::tcp("10.0.0.1", 443, "10.0.0.2", 80);
        check(
            &rs,
            Hook::Input,
            &both,
            true,
            &outcome(Drop, &[4, 5, 7], &["a"]),
        );
        let from80 = Pkt::tcp("10.0.0.1", 80, "10.0.0.2", 443);
        check(
            &rs,
            Hook::Input,
            &from80,
            true,
            &outcome(Accept, &[4, 5, 6, 2], &["a"]),
        );
        let neither = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 2);
        check(
            &rs,
            Hook::Input,
            &neither,
            true,
            &outcome(Accept, &[2], &[]),
        );
    }

    #[test]
    fn ports_need_tcp_or_udp() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             -A INPUT -p udp --dport 53 -j LOG --log-prefix dns
             -A INPUT -p tcp --dport 50:60 -j LOG --log-prefix tcp
             -A INPUT -p udp ! --dport 53 -j LOG --log-prefix notdns",
        );
        let dns = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(
            &rs,
            Hook::Input,
            &dns,
            true,
            &outcome(Accept, &[3, 2], &["dns"]),
        );
        let tcp = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 53);
        check(
            &rs,
            Hook::Input,
            &tcp,
            true,
            &outcome(Accept, &[4, 2], &["tcp"]),
        );
        let ping = Pkt::icmp("10.0.0.1", "10.0.0.2", 8, 0);
        check(&rs, Hook::Input, &ping, true, &outcome(Accept, &[2], &[]));
    }

    #[test]
    fn icmp_types_codes_and_any() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             -A INPUT -p icmp -m icmp --icmp-type any -j LOG --log-prefix any
             -A INPUT -p icmp -m icmp --icmp-type 8 -j LOG --log-prefix echo
             -A INPUT -p icmp -m icmp --icmp-type 3/1 -j LOG --log-prefix host-unreach
             -A INPUT -p icmp -m icmp ! --icmp-type 3/1 -j LOG --log-prefix not-host
             -A INPUT -p icmp -m icmp ! --icmp-type any -j LOG --log-prefix never",
        );
        let echo = Pkt::icmp("10.0.0.1", "10.0.0.2", 8, 5);
        check(
            &rs,
            Hook::Input,
            &echo,
            true,
            &outcome(Accept, &[3, 4, 6, 2], &["any", "echo", "not-host"]),
        );
        let unreach = Pkt::icmp("10.0.0.1", "10.0.0.2", 3, 1);
        check(
            &rs,
            Hook::Input,
            &unreach,
            true,
            &outcome(Accept, &[3, 5, 2], &["any", "host-unreach"]),
        );
        let port_unreach = Pkt::icmp("10.0.0.1", "10.0.0.2", 3, 3);
        check(
            &rs,
            Hook::Input,
            &port_unreach,
            true,
            &outcome(Accept, &[3, 6, 2], &["any", "not-host"]),
        );
        // The match needs `-p icmp`: a tcp packet meets none of them.
        check(&rs, Hook::Input, &web(), true, &outcome(Accept, &[2], &[]));
    }

    #[test]
    fn icmp_any_ignores_codes_as_the_kernel_does() {
        let mut rs = ruleset(
            "*filter
             :INPUT ACCEPT
             -A INPUT -p icmp -m icmp --icmp-type any -j DROP",
        );
        let icmp = rs.tables[0].chains[0].rules[0]
            .matches
            .icmp
            .as_mut()
            .unwrap();
        (icmp.value.code_lo, icmp.value.code_hi) = (3, 3);
        let echo = Pkt::icmp("10.0.0.1", "10.0.0.2", 8, 0);
        check(&rs, Hook::Input, &echo, true, &outcome(Drop, &[3], &[]));
    }

    #[test]
    fn ctstate_sets() {
        let rs = ruleset(
            "*filter
             :INPUT DROP
             -A INPUT -m conntrack --ctstate INVALID -j DROP
             -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
             -A INPUT -m conntrack ! --ctstate NEW -j LOG --log-prefix odd
             -A INPUT -p tcp --dport 80 -j ACCEPT",
        );
        let est = web().state(ESTABLISHED);
        check(&rs, Hook::Input, &est, true, &outcome(Accept, &[4], &[]));
        let rel = web().state(RELATED);
        check(&rs, Hook::Input, &rel, true, &outcome(Accept, &[4], &[]));
        check(
            &rs,
            Hook::Input,
            &web().state(INVALID),
            true,
            &outcome(Drop, &[3], &[]),
        );
        check(
            &rs,
            Hook::Input,
            &web().state(NEW),
            true,
            &outcome(Accept, &[6], &[]),
        );
        let untracked = web().state(UNTRACKED);
        check(
            &rs,
            Hook::Input,
            &untracked,
            true,
            &outcome(Accept, &[5, 6], &["odd"]),
        );
    }

    #[test]
    fn nat_only_sees_the_first_packet() {
        let rs = ruleset(
            "*mangle
             :PREROUTING ACCEPT
             -A PREROUTING -j LOG --log-prefix mangle
             *nat
             :PREROUTING ACCEPT
             -A PREROUTING -p tcp -j LOG --log-prefix nat
             -A PREROUTING -p tcp -j ACCEPT
             -A PREROUTING -j LOG --log-prefix unreached
             *raw
             :PREROUTING ACCEPT
             -A PREROUTING -j LOG --log-prefix raw",
        );
        let p = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 80).i("eth0");
        let first = outcome(Accept, &[11, 10, 3, 2, 6, 7], &["raw", "mangle", "nat"]);
        check(&rs, Hook::Prerouting, &p, true, &first);
        let later = outcome(Accept, &[11, 10, 3, 2], &["raw", "mangle"]);
        check(&rs, Hook::Prerouting, &p, false, &later);
        // The nat policy is in its block too.
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        let first = outcome(
            Accept,
            &[11, 10, 3, 2, 8, 5],
            &["raw", "mangle", "unreached"],
        );
        check(&rs, Hook::Prerouting, &udp, true, &first);
    }

    fn to(addr: &str, ports: Option<(u16, u16)>) -> NatRange {
        NatRange {
            addr_min: addr.parse().unwrap(),
            addr_max: addr.parse().unwrap(),
            ports: ports.map(|(lo, hi)| PortRange { lo, hi }),
        }
    }

    #[test]
    fn nat_targets_end_the_nat_table() {
        let rs = ruleset(
            "*nat
             :PREROUTING ACCEPT
             :POSTROUTING ACCEPT
             :D -
             -A PREROUTING -p udp -j LOG --log-prefix pre
             -A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 172.17.0.2:8080
             -A PREROUTING -p tcp -j D
             -A PREROUTING -j LOG --log-prefix after
             -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE
             -A D -p tcp --dport 22 -j REDIRECT --to-ports 2222
             -A D -j LOG --log-prefix d",
        );
        let dnat = Nat::Dnat(to("172.17.0.2", Some((8080, 8080))));
        // Neither the rest of the chain nor the policy sees it.
        check(
            &rs,
            Hook::Prerouting,
            &web(),
            true,
            &outcome_nat(Accept, &[6], &[], dnat),
        );
        // Later packets of the connection do not walk nat at all.
        check(
            &rs,
            Hook::Prerouting,
            &web(),
            false,
            &outcome(Accept, &[], &[]),
        );
        // In a user chain it ends the table too, not just the chain.
        let ssh = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 22);
        let redirect = Nat::Redirect(Some(PortRange { lo: 2222, hi: 2222 }));
        check(
            &rs,
            Hook::Prerouting,
            &ssh,
            true,
            &outcome_nat(Accept, &[7, 10], &[], redirect),
        );
        let https = Pkt::tcp("10.0.0.1", 1, "10.0.0.2", 443);
        check(
            &rs,
            Hook::Prerouting,
            &https,
            true,
            &outcome(Accept, &[7, 11, 8, 2], &["d", "after"]),
        );
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(
            &rs,
            Hook::Prerouting,
            &udp,
            true,
            &outcome(Accept, &[5, 8, 2], &["pre", "after"]),
        );
        check(
            &rs,
            Hook::Postrouting,
            &web(),
            true,
            &outcome_nat(Accept, &[9], &[], Nat::Masquerade(None)),
        );
        let lan = Pkt::tcp("192.168.1.1", 1, "10.0.0.2", 80);
        check(
            &rs,
            Hook::Postrouting,
            &lan,
            true,
            &outcome(Accept, &[3], &[]),
        );
    }

    #[test]
    fn tables_after_nat_still_judge() {
        // OUTPUT: nat, then filter (which, here as in the datapath, sees
        // the packet as it came).
        let rs = ruleset(
            "*nat
             :OUTPUT ACCEPT
             -A OUTPUT -p tcp -j DNAT --to-destination 10.9.9.9
             *filter
             :OUTPUT ACCEPT
             -A OUTPUT -d 10.0.0.2 -j DROP",
        );
        let dnat = Nat::Dnat(to("10.9.9.9", None));
        check(
            &rs,
            Hook::Output,
            &web(),
            true,
            &outcome_nat(Drop, &[3, 6], &[], dnat),
        );
        // INPUT: filter first, nat after; a dropped packet never gets there.
        let rs = ruleset(
            "*nat
             :INPUT ACCEPT
             -A INPUT -j SNAT --to-source 192.0.2.1
             *filter
             :INPUT DROP
             -A INPUT -p tcp -j ACCEPT",
        );
        let snat = Nat::Snat(to("192.0.2.1", None));
        check(
            &rs,
            Hook::Input,
            &web(),
            true,
            &outcome_nat(Accept, &[6, 3], &[], snat),
        );
        let udp = Pkt::udp("10.0.0.1", 1, "10.0.0.2", 53);
        check(&rs, Hook::Input, &udp, true, &outcome(Drop, &[5], &[]));
    }

    #[test]
    fn tables_only_run_at_their_hooks() {
        let rs = ruleset(
            "*raw
             :PREROUTING ACCEPT
             -A PREROUTING -j DROP
             *nat
             :POSTROUTING ACCEPT
             -A POSTROUTING -j LOG --log-prefix snat
             *filter
             :FORWARD ACCEPT
             -A FORWARD -j LOG --log-prefix fwd",
        );
        let p = web();
        check(
            &rs,
            Hook::Forward,
            &p,
            true,
            &outcome(Accept, &[9, 8], &["fwd"]),
        );
        check(
            &rs,
            Hook::Postrouting,
            &p,
            true,
            &outcome(Accept, &[6, 5], &["snat"]),
        );
        check(&rs, Hook::Prerouting, &p, true, &outcome(Drop, &[3], &[]));
        // nat and filter have INPUT chains, with no rules: both policies count.
        check(&rs, Hook::Input, &p, true, &outcome(Accept, &[0, 0], &[]));
        let rs = ruleset("*raw");
        check(&rs, Hook::Input, &p, true, &outcome(Accept, &[], &[]));
    }

    #[test]
    fn proto_all_is_no_match() {
        let rs = ruleset(
            "*filter
             :INPUT ACCEPT
             -A INPUT -p all -j LOG --log-prefix all
             -A INPUT ! -p all -j LOG --log-prefix notall",
        );
        check(
            &rs,
            Hook::Input,
            &web(),
            true,
            &outcome(Accept, &[3, 4, 2], &["all", "notall"]),
        );
    }
}
