//! The nat table in the harness: where NAT targets translate to, and the
//! one difference between the kernel and netctl that is theirs to choose.
//!
//! **What is implementation-defined.** When a source NAT (SNAT,
//! MASQUERADE) must change a connection's source port (or ICMP
//! identifier) — the translated tuple is taken by another connection, or
//! the original port is outside `--to-ports` — the kernel draws the new
//! one at random (`nf_nat_l4proto_unique_tuple`: `get_random_u16()` for
//! source manips) from `--to-ports` or from the original port's class
//! (1–511, 600–1023, 1024–65535; ICMP: any identifier); netctl tries the
//! range's first port, then random ones. (The kernel does the same for a
//! new connection without any NAT rule whose reply tuple is taken: its null
//! binding, `nf_nat_alloc_null_binding`, remaps the source port.) Which
//! port either picks is not
//! part of the contract; *whether* the port changes is (the kernel keeps
//! the original port when the tuple is unique and allowed,
//! `get_unique_tuple`), and so is everything else.
//!
//! So `normalise` renames such choices, on each side separately, before
//! arrivals are compared: a frame that arrived with a source port (ICMP:
//! query identifier) that is neither the one it was sent with nor the one
//! it was built with (a reply is sent to what arrived, and must arrive
//! translated back to what was built), in the sent port's class or in a
//! SNAT/MASQUERADE `--to-ports` range of the ruleset, has had it chosen:
//! that (address, port) endpoint becomes `*1`, `*2`, … in order of
//! discovery, wherever it appears — in the arrival itself, in what is sent
//! back to it, in ICMP errors quoting it. Every other port is compared as
//! it is: one kept, one outside those ranges, a destination port, a reply's
//! port translated back.
//!
//! Deterministic choices are compared exactly: the kernel's DNAT and
//! REDIRECT port (the original if within `--to-ports` and unique, else the
//! range's first free one: no random offset for destination manips) and
//! its choice of address in a range (a hash of the tuple's addresses).
//! The NAT cases that CI runs draw single addresses and, for DNAT and
//! REDIRECT, single ports (`GenConfig::nat_ranges` off): a range's
//! addresses that nothing answers ARP for show a difference of their own
//! (docs/nat.md, "What the differential harness still finds");
//! `--nat-ranges` draws ranges.

use std::net::Ipv4Addr;

use netctl::rules::model::{Nat, PortRange, Ruleset, Target};

use super::scenario::{Step, same_frame};
use super::wire::{Ip, L4};

/// Where NAT targets of the NAT cases translate to: the host's addresses
/// (replies come back to it and are translated there), the containers'
/// (another container receives, or answers for, the connection), the
/// service addresses (`scenario::virtual_peers`: a container receives
/// them through a neighbour entry; 192.0.2.1 has no route).
pub fn pool() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = super::lab::BRIDGES
        .iter()
        .map(|(_, a)| a.split('/').next().unwrap().parse().unwrap())
        .collect();
    v.extend(super::lab::specs().iter().map(|s| s.ip));
    v.extend(super::scenario::virtual_peers().iter().map(|p| p.0));
    v
}

/// Whether the ruleset has a NAT target (the reference interpreter's
/// model has no NAT: such cases are not checked against it).
pub fn has_nat_target(rs: &Ruleset) -> bool {
    rs.tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
        .any(|r| matches!(r.target, Target::Nat(_)))
}

/// The `--to-ports` ranges of the ruleset's source NAT targets.
fn source_ranges(rs: &Ruleset) -> Vec<PortRange> {
    rs.tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
        .filter_map(|r| match r.target {
            Target::Nat(n @ (Nat::Snat(_) | Nat::Masquerade(_))) => n.ports(),
            _ => None,
        })
        .collect()
}

/// Whether a source NAT may have chosen `now` for a frame sent from
/// `orig` (see the module's documentation).
fn may_choose(proto: u8, orig: u16, now: u16, ranges: &[PortRange]) -> bool {
    if proto == 1 {
        return true;
    }
    let class = match orig {
        0..512 => (1, 511),
        512..1024 => (600, 1023),
        _ => (1024, u16::MAX),
    };
    (class.0..=class.1).contains(&now) || ranges.iter().any(|r| (r.lo..=r.hi).contains(&now))
}

/// The source endpoint a frame has: (protocol, address, port or ICMP
/// query identifier).
fn source(ip: &Ip) -> Option<(u8, Ipv4Addr, u16)> {
    match ip.l4 {
        L4::Tcp { sport, .. } | L4::Udp { sport, .. } => Some((ip.proto(), ip.src, sport)),
        L4::Icmp { typ, rest, .. } if is_query(typ) => Some((1, ip.src, (rest >> 16) as u16)),
        _ => None,
    }
}

fn is_query(typ: u8) -> bool {
    matches!(typ, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
}

/// The endpoints source NAT chose on one side, in order of discovery.
#[derive(Debug, Default)]
pub struct Chosen(Vec<(u8, Ipv4Addr, u16)>);

impl Chosen {
    /// Finds them: `built[i]` is step `i` as built, `sent[i]` as sent,
    /// `got[i][c]` what reached container `c` after it.
    pub fn find(built: &[Step], sent: &[Step], got: &[Vec<Vec<Ip>>], rs: &Ruleset) -> Chosen {
        let ranges = source_ranges(rs);
        let mut out = Chosen::default();
        for ((b, s), per) in built.iter().zip(sent).zip(got) {
            let (Some((proto, _, orig)), Some((_, _, as_built))) = (source(&s.ip), source(&b.ip))
            else {
                continue;
            };
            for p in per.iter().flatten() {
                if !same_frame(&s.ip, p) {
                    continue;
                }
                let Some(e @ (_, _, now)) = source(p) else {
                    continue;
                };
                if now != orig
                    && now != as_built
                    && may_choose(proto, orig, now, &ranges)
                    && !out.0.contains(&e)
                {
                    out.0.push(e);
                }
            }
        }
        out
    }

    /// `*N` for a chosen endpoint.
    fn name(&self, proto: u8, addr: Ipv4Addr, port: u16) -> Option<String> {
        self.0
            .iter()
            .position(|e| *e == (proto, addr, port))
            .map(|i| format!("*{}", i + 1))
    }

    /// The packet's summary (`Ip`'s `Display`), chosen endpoints' ports
    /// renamed.
    pub fn summary(&self, ip: &Ip) -> String {
        ip.summary_with(&|proto, addr, port| self.name(proto, addr, port))
    }
}

/// Arrivals as compared: per step, per container, the sorted summaries
/// with source NAT's choices renamed.
pub fn normalise(
    built: &[Step],
    sent: &[Step],
    got: &[Vec<Vec<Ip>>],
    rs: &Ruleset,
) -> Vec<Vec<Vec<String>>> {
    let chosen = Chosen::find(built, sent, got, rs);
    got.iter()
        .map(|per| {
            per.iter()
                .map(|cell| {
                    let mut v: Vec<String> = cell.iter().map(|p| chosen.summary(p)).collect();
                    v.sort();
                    v
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::scenario::L2Dst;
    use super::*;

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, id: u16) -> Ip {
        Ip {
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            id,
            l4: L4::Udp {
                sport,
                dport,
                payload: 8,
            },
        }
    }

    #[test]
    fn source_port_choices_are_renamed_and_nothing_else() {
        let sent = vec![
            Step {
                from: 0,
                l2: L2Dst::Gateway,
                ip: udp([10, 1, 0, 2], 20001, [10, 2, 0, 2], 53, 0x1000),
                what: "udp",
                answers: None,
            },
            Step {
                from: 2,
                l2: L2Dst::Gateway,
                ip: udp([10, 2, 0, 2], 53, [10, 2, 0, 1], 7777, 0x1001),
                what: "udp reply",
                answers: Some(0x1000),
            },
        ];
        let rs = Ruleset::default();
        // The kernel picked 31337, netctl 1024: the same, once renamed.
        let side = |p: u16| {
            let mut a = udp([10, 2, 0, 1], p, [10, 2, 0, 2], 53, 0x1000);
            a.ttl = 63;
            let mut back = udp([10, 2, 0, 2], 53, [10, 1, 0, 2], 20001, 0x1001);
            back.ttl = 63;
            vec![
                vec![vec![], vec![], vec![a]],
                vec![vec![back], vec![], vec![]],
            ]
        };
        // The reply was sent to the port chosen (here, as built).
        let k = normalise(&sent, &sent, &side(31337), &rs);
        let n = normalise(&sent, &sent, &side(1024), &rs);
        assert_eq!(k, n);
        assert_eq!(
            k[0][2],
            vec!["10.2.0.1 > 10.2.0.2 ttl 63 udp *1 > 53 len 8".to_string()]
        );
        // A port kept is not a choice; one out of its class is compared.
        let kept = normalise(&sent, &sent, &side(20001), &rs);
        assert_ne!(kept, k);
        let low = normalise(&sent, &sent, &side(80), &rs);
        assert!(low[0][2][0].contains("udp 80 > 53"), "{low:?}");
        // A reply translated back is compared as it is.
        assert!(k[1][0][0].contains("udp 53 > 20001"), "{k:?}");
    }
}
