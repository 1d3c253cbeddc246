//! The packets of a case: a few flows between the containers and towards
//! the host, interleaved, each a realistic exchange (a TCP handshake with
//! consistent sequence numbers, a UDP exchange, ICMP echo, an ICMP error
//! quoting an earlier packet of the flow) or something conntrack calls
//! INVALID (TCP with SYN+FIN, a SYN/ACK or an ICMP error for no flow, an
//! ICMP type that cannot start a connection). Replies of forwarded flows
//! are sent from the other container; the host answers for itself.
//!
//! With NAT (`nat`), a reply answers its request *as it arrived*
//! (`Step::answers`, `resolve`): it is sent by whichever container the
//! request reached, to the address and port the request came from there,
//! so that a translated connection's replies take the reverse translation.
//! Flows also go to "service" addresses nobody owns (`virtual_peers`),
//! which DNAT rules may turn into a container or the host.

use std::fmt;
use std::net::Ipv4Addr;

use super::lab::{self, Spec};
use super::wire::{Ip, L4, tcpf};

/// A small deterministic generator (SplitMix64): the same seed gives the
/// same case on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Where a frame is addressed at layer 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L2Dst {
    /// The sender's gateway (its bridge's MAC): routed or local.
    Gateway,
    /// A container on the same bridge: bridged.
    Container(usize),
}

/// One frame a container sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Index in `lab::specs()`.
    pub from: usize,
    pub l2: L2Dst,
    pub ip: Ip,
    /// What the step is, for people.
    pub what: &'static str,
    /// A reply: the IP id of the frame it answers. Sent as `resolve` makes
    /// it from where and how that frame arrived (else as built).
    pub answers: Option<u16>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let specs = lab::specs();
        let via = match self.l2 {
            L2Dst::Gateway => "gateway".to_string(),
            L2Dst::Container(c) => specs[c].name.to_string(),
        };
        write!(
            f,
            "{} -> {via}: {} ({})",
            specs[self.from].name, self.ip, self.what
        )?;
        if let Some(id) = self.answers {
            write!(f, " [answers id {id:#x} as it arrived]")?;
        }
        Ok(())
    }
}

/// Ports and other values rules are likely to name, so that matches hit.
#[derive(Clone, Debug)]
pub struct Pools {
    pub ports: Vec<u16>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            ports: vec![22, 53, 80, 443, 1000, 1024, 8080, 65535],
        }
    }
}

struct Ctx<'a> {
    rng: &'a mut Rng,
    specs: Vec<Spec>,
    pools: &'a Pools,
    /// Numbers the flows' client ports and ICMP ids (both sides forget
    /// their connections between cases; distinct flows within a case
    /// need distinct ones).
    serial: &'a mut u32,
    /// NAT cases: replies answer what arrived; flows to service addresses.
    nat: bool,
    /// The client ports each container's flows took so far (NAT cases).
    used: Vec<(usize, u16)>,
}

impl Ctx<'_> {
    fn port(&mut self) -> u16 {
        if self.rng.chance(80) {
            *self.rng.pick(&self.pools.ports)
        } else {
            1 + self.rng.below(65535) as u16
        }
    }
    /// A client port for a flow from container `from`: usually fresh,
    /// sometimes one rules name. In NAT cases, now and then one of the
    /// container's earlier flows took: the same socket talking to another
    /// destination, whose source NAT keeps its first translation (the
    /// kernel's `find_appropriate_src`).
    fn client_port(&mut self, from: usize) -> u16 {
        *self.serial = self.serial.wrapping_add(1);
        if self.nat {
            let mine: Vec<u16> = self
                .used
                .iter()
                .filter(|(c, _)| *c == from)
                .map(|(_, p)| *p)
                .collect();
            if !mine.is_empty() && self.rng.chance(25) {
                return *self.rng.pick(&mine);
            }
        }
        let p = if self.rng.chance(20) {
            *self.rng.pick(&self.pools.ports)
        } else {
            20000 + (*self.serial % 40000) as u16
        };
        if self.nat {
            self.used.push((from, p));
        }
        p
    }
    fn id(&mut self) -> u16 {
        *self.serial = self.serial.wrapping_add(1);
        (*self.serial % 65536) as u16
    }
}

/// Who talks to whom.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Another container: (index, bridged).
    Container(usize, bool),
    /// One of the host's addresses.
    Host(Ipv4Addr),
    /// An address nobody owns (NAT cases): the host forwards it to the
    /// container that stands for it, or cannot route it at all.
    Virtual(Ipv4Addr, Option<usize>),
}

/// The service addresses flows of NAT cases go to, and the container that
/// receives what the host forwards there: through a permanent neighbour
/// entry in the host (`lab::spoofed`), or the route to `lab::OUTSIDE`.
pub fn virtual_peers() -> Vec<(Ipv4Addr, Option<usize>)> {
    let specs = lab::specs();
    let mut v = Vec::new();
    for (b, _) in lab::BRIDGES {
        let owner = specs.iter().position(|s| s.bridge == b);
        v.push((lab::spoofed(b)[0], owner));
    }
    let via: Ipv4Addr = lab::OUTSIDE.1.parse().unwrap();
    let owner = v.iter().find(|p| p.0 == via).and_then(|p| p.1);
    v.push((Ipv4Addr::new(192, 0, 2, 1), owner));
    v
}

fn ip(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Ip {
    Ip {
        src,
        dst,
        ttl: 64,
        id: 0,
        l4,
    }
}

/// Builds the steps of one case: `flows` flows, interleaved. `nat`: the
/// NAT cases' flows (see the module's documentation).
pub fn steps(rng: &mut Rng, pools: &Pools, serial: &mut u32, flows: usize, nat: bool) -> Vec<Step> {
    let specs = lab::specs();
    let mut cx = Ctx {
        rng,
        specs,
        pools,
        serial,
        nat,
        used: Vec::new(),
    };
    // (flow, index in the flow, step): `answers` holds an index in the
    // flow until the frames have their ids.
    let mut queues: Vec<std::collections::VecDeque<(usize, Step)>> = Vec::new();
    for _ in 0..flows {
        queues.push(flow(&mut cx).into_iter().enumerate().collect());
    }
    let mut out = Vec::new();
    let mut at = std::collections::HashMap::new();
    while queues.iter().any(|q| !q.is_empty()) {
        let live: Vec<usize> = (0..queues.len())
            .filter(|&i| !queues[i].is_empty())
            .collect();
        let i = *cx.rng.pick(&live);
        let (k, s) = queues[i].pop_front().unwrap();
        at.insert((i, k), out.len());
        out.push((i, s));
    }
    // Frames get distinct IP ids, so a copy seen twice is visible.
    let id = |n: usize| 0x1000 + n as u16;
    let mut steps = Vec::new();
    for (n, (flow, mut s)) in out.into_iter().enumerate() {
        s.ip.id = id(n);
        s.answers = s.answers.map(|k| id(at[&(flow, usize::from(k))]));
        steps.push(s);
    }
    steps
}

/// The frame step `i` of `steps` is sent as, given what arrived where so
/// far (`seen`: container, packet, in order). A reply (`answers`) to a
/// frame that arrived somewhere goes from there, back to where that frame
/// came from as it arrived: addresses and ports (ICMP: identifier) swapped,
/// an ICMP error quoting it as it arrived. Anything else, and a reply to a
/// frame that arrived nowhere (dropped, or delivered to the host), is sent
/// as built.
pub fn resolve(steps: &[Step], i: usize, seen: &[(usize, Ip)]) -> Step {
    let s = &steps[i];
    let Some(id) = s.answers else {
        return s.clone();
    };
    let Some(req) = steps[..i].iter().find(|x| x.ip.id == id) else {
        return s.clone();
    };
    let Some((at, got)) = seen.iter().rev().find(|(_, p)| same_frame(&req.ip, p)) else {
        return s.clone();
    };
    let specs = lab::specs();
    let me = &specs[*at];
    // A frame that came back to its own sender is not answered.
    if got.src == me.ip {
        return s.clone();
    }
    let l4 = match (&s.ip.l4, &got.l4) {
        (
            L4::Tcp {
                seq,
                ack,
                flags,
                payload,
                ..
            },
            L4::Tcp { sport, dport, .. },
        ) => L4::Tcp {
            sport: *dport,
            dport: *sport,
            seq: *seq,
            ack: *ack,
            flags: *flags,
            payload: *payload,
        },
        (L4::Udp { payload, .. }, L4::Udp { sport, dport, .. }) => L4::Udp {
            sport: *dport,
            dport: *sport,
            payload: *payload,
        },
        (
            L4::Icmp {
                typ,
                code,
                rest,
                payload,
            },
            L4::Icmp { rest: r, .. },
        ) => L4::Icmp {
            typ: *typ,
            code: *code,
            rest: (r & 0xffff_0000) | (rest & 0xffff),
            payload: *payload,
        },
        (L4::IcmpError { typ, code, .. }, _) => L4::IcmpError {
            typ: *typ,
            code: *code,
            quoted: Box::new(got.clone()),
        },
        _ => return s.clone(),
    };
    let l2 = match specs
        .iter()
        .position(|c| c.ip == got.src && c.bridge == me.bridge)
    {
        Some(c) => L2Dst::Container(c),
        None => L2Dst::Gateway,
    };
    Step {
        from: *at,
        l2,
        ip: Ip {
            src: got.dst,
            dst: got.src,
            ttl: s.ip.ttl,
            id: s.ip.id,
            l4,
        },
        what: s.what,
        answers: s.answers,
    }
}

/// Whether `got` is frame `sent` as it arrived: the same IP id and the
/// same transport content, whatever NAT did to addresses, ports and ICMP
/// identifiers.
pub fn same_frame(sent: &Ip, got: &Ip) -> bool {
    if sent.id != got.id || sent.proto() != got.proto() {
        return false;
    }
    match (&sent.l4, &got.l4) {
        (
            L4::Tcp {
                seq,
                ack,
                flags,
                payload,
                ..
            },
            L4::Tcp {
                seq: s2,
                ack: a2,
                flags: f2,
                payload: p2,
                ..
            },
        ) => (seq, ack, flags, payload) == (s2, a2, f2, p2),
        (L4::Udp { payload, .. }, L4::Udp { payload: p2, .. }) => payload == p2,
        (
            L4::Icmp {
                typ,
                code,
                rest,
                payload,
            },
            L4::Icmp {
                typ: t2,
                code: c2,
                rest: r2,
                payload: p2,
            },
        ) => (typ, code, rest & 0xffff, payload) == (t2, c2, r2 & 0xffff, p2),
        (
            L4::IcmpError { typ, code, .. },
            L4::IcmpError {
                typ: t2, code: c2, ..
            },
        ) => (typ, code) == (t2, c2),
        (L4::Raw { payload, .. }, L4::Raw { payload: p2, .. }) => payload == p2,
        _ => false,
    }
}

fn flow(cx: &mut Ctx) -> Vec<Step> {
    let n = cx.specs.len();
    let from = cx.rng.below(n);
    let me = cx.specs[from].clone();
    let peer = match cx.rng.below(10) {
        // NAT cases: now and then a service address.
        _ if cx.nat && cx.rng.chance(20) => {
            let (a, owner) = *cx.rng.pick(&virtual_peers());
            Peer::Virtual(a, owner)
        }
        0..=5 => {
            let others: Vec<usize> = (0..n).filter(|&i| i != from).collect();
            let to = *cx.rng.pick(&others);
            Peer::Container(to, cx.specs[to].bridge == me.bridge)
        }
        _ => Peer::Host(
            *cx.rng
                .pick(&[Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 2, 0, 1)]),
        ),
    };
    // Between two containers: to the other's MAC on a shared bridge,
    // else through the gateway, and the same way back.
    let between = |to: usize, bridged: bool| {
        let via = |c| {
            if bridged {
                L2Dst::Container(c)
            } else {
                L2Dst::Gateway
            }
        };
        (via(to), Some((to, via(from))))
    };
    let (dst, l2, back) = match peer {
        // What the host forwards to a service address reaches its owner,
        // which answers as if it were that address.
        Peer::Virtual(a, Some(to)) if to != from => {
            // On the sender's subnet: sent to the owner's MAC.
            let (l2, back) = between(to, a.octets()[..3] == me.ip.octets()[..3]);
            (a, l2, back)
        }
        Peer::Virtual(a, _) => (a, L2Dst::Gateway, None),
        Peer::Container(to, bridged) => {
            let (l2, back) = between(to, bridged);
            (cx.specs[to].ip, l2, back)
        }
        Peer::Host(a) => (a, L2Dst::Gateway, None),
    };
    let src = if back.is_none() && cx.rng.chance(10) {
        // Now and then another source on the container's subnet (only for
        // packets to the host, which answers a neighbour the harness
        // provides).
        *cx.rng.pick(&lab::spoofed(me.bridge))
    } else {
        me.ip
    };
    let out = |ip: Ip, what| Step {
        from,
        l2,
        ip,
        what,
        answers: None,
    };
    // A reply's request, by its index in the flow (NAT cases only).
    let nat = cx.nat;
    let answering = move |k: usize| nat.then_some(k as u16);
    let mut v = Vec::new();
    match cx.rng.below(12) {
        // TCP: a handshake (the host answers for itself), data, a close.
        0..=2 => {
            let (sport, dport) = (cx.client_port(from), cx.port());
            let (x, y) = (cx.rng.next_u64() as u32, cx.rng.next_u64() as u32);
            let tcp = |seq, ack, flags, payload| L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                payload,
            };
            let rtcp = |seq, ack, flags, payload| L4::Tcp {
                sport: dport,
                dport: sport,
                seq,
                ack,
                flags,
                payload,
            };
            v.push(out(ip(src, dst, tcp(x, 0, tcpf::SYN, 0)), "tcp syn"));
            if let Some((to, l2b)) = back {
                let r = |ip, what, k: usize| Step {
                    from: to,
                    l2: l2b,
                    ip,
                    what,
                    answers: answering(k),
                };
                let steps = 1 + cx.rng.below(5);
                v.push(r(
                    ip(
                        dst,
                        src,
                        rtcp(y, x.wrapping_add(1), tcpf::SYN | tcpf::ACK, 0),
                    ),
                    "tcp syn/ack reply",
                    0,
                ));
                if steps > 1 {
                    v.push(out(
                        ip(
                            src,
                            dst,
                            tcp(x.wrapping_add(1), y.wrapping_add(1), tcpf::ACK, 0),
                        ),
                        "tcp ack",
                    ));
                }
                if steps > 2 {
                    v.push(out(
                        ip(
                            src,
                            dst,
                            tcp(
                                x.wrapping_add(1),
                                y.wrapping_add(1),
                                tcpf::ACK | tcpf::PSH,
                                10,
                            ),
                        ),
                        "tcp data",
                    ));
                }
                if steps > 3 {
                    v.push(r(
                        ip(
                            dst,
                            src,
                            rtcp(y.wrapping_add(1), x.wrapping_add(11), tcpf::ACK, 0),
                        ),
                        "tcp ack reply",
                        3,
                    ));
                }
                if steps > 4 {
                    v.push(out(
                        ip(
                            src,
                            dst,
                            tcp(
                                x.wrapping_add(11),
                                y.wrapping_add(1),
                                tcpf::ACK | tcpf::FIN,
                                0,
                            ),
                        ),
                        "tcp fin",
                    ));
                }
            }
        }
        // UDP: one way, or request and answer, or an ICMP error back.
        3..=5 => {
            let (sport, dport) = (cx.client_port(from), cx.port());
            let req = ip(
                src,
                dst,
                L4::Udp {
                    sport,
                    dport,
                    payload: 8 + cx.rng.below(64) as u16,
                },
            );
            v.push(out(req.clone(), "udp"));
            match back {
                Some((to, l2b)) => match cx.rng.below(4) {
                    0 => {}
                    1 => v.push(Step {
                        from: to,
                        l2: l2b,
                        ip: ip(
                            dst,
                            src,
                            L4::IcmpError {
                                typ: 3,
                                code: 3,
                                quoted: Box::new(req),
                            },
                        ),
                        what: "icmp port unreachable for it",
                        answers: answering(0),
                    }),
                    _ => {
                        v.push(Step {
                            from: to,
                            l2: l2b,
                            ip: ip(
                                dst,
                                src,
                                L4::Udp {
                                    sport: dport,
                                    dport: sport,
                                    payload: 20,
                                },
                            ),
                            what: "udp reply",
                            answers: answering(0),
                        });
                        if cx.rng.chance(50) {
                            v.push(out(
                                ip(
                                    src,
                                    dst,
                                    L4::Udp {
                                        sport,
                                        dport,
                                        payload: 4,
                                    },
                                ),
                                "udp again",
                            ));
                        }
                    }
                },
                None => {
                    if cx.rng.chance(40) {
                        v.push(out(req, "udp again"));
                    }
                }
            }
        }
        // ICMP echo, answered by the peer or the host, then once more.
        6..=7 => {
            let id = cx.id();
            let echo = |t, seq| L4::Icmp {
                typ: t,
                code: 0,
                rest: (id as u32) << 16 | seq,
                payload: 16,
            };
            v.push(out(ip(src, dst, echo(8, 1)), "echo request"));
            if let Some((to, l2b)) = back {
                v.push(Step {
                    from: to,
                    l2: l2b,
                    ip: ip(dst, src, echo(0, 1)),
                    what: "echo reply",
                    answers: answering(0),
                });
            }
            if cx.rng.chance(60) {
                v.push(out(ip(src, dst, echo(8, 2)), "echo request again"));
            }
        }
        // INVALID to conntrack.
        8..=9 => {
            let (sport, dport) = (cx.client_port(from), cx.port());
            let x = cx.rng.next_u64() as u32;
            let tcp = |flags| L4::Tcp {
                sport,
                dport,
                seq: x,
                ack: 0,
                flags,
                payload: 0,
            };
            match cx.rng.below(6) {
                0 => v.push(out(ip(src, dst, tcp(tcpf::SYN | tcpf::FIN)), "tcp syn+fin")),
                1 => v.push(out(ip(src, dst, tcp(0)), "tcp no flags")),
                2 => v.push(out(
                    ip(src, dst, tcp(tcpf::SYN | tcpf::ACK)),
                    "tcp syn/ack for no flow",
                )),
                3 => v.push(out(
                    ip(
                        src,
                        dst,
                        L4::Icmp {
                            typ: 9,
                            code: 0,
                            rest: 0,
                            payload: 8,
                        },
                    ),
                    "icmp router advertisement",
                )),
                4 => {
                    let ghost = ip(
                        dst,
                        src,
                        L4::Udp {
                            sport: dport,
                            dport: sport,
                            payload: 8,
                        },
                    );
                    v.push(out(
                        ip(
                            src,
                            dst,
                            L4::IcmpError {
                                typ: 3,
                                code: 1,
                                quoted: Box::new(ghost),
                            },
                        ),
                        "icmp error for no flow",
                    ))
                }
                _ => v.push(out(ip(src, dst, tcp(tcpf::ACK)), "tcp ack for no flow")),
            }
        }
        // Another protocol, or a routed packet whose TTL runs out here.
        10 => v.push(out(
            ip(
                src,
                dst,
                L4::Raw {
                    proto: 253,
                    payload: 12,
                },
            ),
            "protocol 253",
        )),
        _ => {
            let mut p = ip(
                src,
                dst,
                L4::Udp {
                    sport: cx.client_port(from),
                    dport: cx.port(),
                    payload: 8,
                },
            );
            p.ttl = 1;
            v.push(out(p, "udp ttl 1"));
        }
    }
    v
}
