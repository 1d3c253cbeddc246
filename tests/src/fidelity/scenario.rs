//! The packets of a case: a few flows between the containers and towards
//! the host, interleaved, each a realistic exchange (a TCP handshake with
//! consistent sequence numbers, a UDP exchange, ICMP echo, an ICMP error
//! quoting an earlier packet of the flow) or something conntrack calls
//! INVALID (TCP with SYN+FIN, a SYN/ACK or an ICMP error for no flow, an
//! ICMP type that cannot start a connection). Replies of forwarded flows
//! are sent from the other container; the host answers for itself.

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
        )
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
}

impl Ctx<'_> {
    fn port(&mut self) -> u16 {
        if self.rng.chance(80) {
            *self.rng.pick(&self.pools.ports)
        } else {
            1 + self.rng.below(65535) as u16
        }
    }
    /// A client port: usually fresh, sometimes one rules name.
    fn client_port(&mut self) -> u16 {
        *self.serial = self.serial.wrapping_add(1);
        if self.rng.chance(20) {
            *self.rng.pick(&self.pools.ports)
        } else {
            20000 + (*self.serial % 40000) as u16
        }
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

/// Builds the steps of one case: `flows` flows, interleaved.
pub fn steps(rng: &mut Rng, pools: &Pools, serial: &mut u32, flows: usize) -> Vec<Step> {
    let specs = lab::specs();
    let mut cx = Ctx {
        rng,
        specs,
        pools,
        serial,
    };
    let mut queues: Vec<std::collections::VecDeque<Step>> = Vec::new();
    for _ in 0..flows {
        queues.push(flow(&mut cx).into());
    }
    let mut out = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        let live: Vec<usize> = (0..queues.len())
            .filter(|&i| !queues[i].is_empty())
            .collect();
        let i = *cx.rng.pick(&live);
        out.push(queues[i].pop_front().unwrap());
    }
    // Frames get distinct IP ids, so a copy seen twice is visible.
    for (n, s) in out.iter_mut().enumerate() {
        s.ip.id = 0x1000 + n as u16;
    }
    out
}

fn flow(cx: &mut Ctx) -> Vec<Step> {
    let n = cx.specs.len();
    let from = cx.rng.below(n);
    let me = cx.specs[from].clone();
    let peer = match cx.rng.below(10) {
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
    let (dst, l2, back) = match peer {
        Peer::Container(to, bridged) => (
            cx.specs[to].ip,
            if bridged {
                L2Dst::Container(to)
            } else {
                L2Dst::Gateway
            },
            Some((
                to,
                if bridged {
                    L2Dst::Container(from)
                } else {
                    L2Dst::Gateway
                },
            )),
        ),
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
    let out = |ip: Ip, what| Step { from, l2, ip, what };
    let mut v = Vec::new();
    match cx.rng.below(12) {
        // TCP: a handshake (the host answers for itself), data, a close.
        0..=2 => {
            let (sport, dport) = (cx.client_port(), cx.port());
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
                let r = |ip, what| Step {
                    from: to,
                    l2: l2b,
                    ip,
                    what,
                };
                let steps = 1 + cx.rng.below(5);
                v.push(r(
                    ip(
                        dst,
                        src,
                        rtcp(y, x.wrapping_add(1), tcpf::SYN | tcpf::ACK, 0),
                    ),
                    "tcp syn/ack reply",
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
            let (sport, dport) = (cx.client_port(), cx.port());
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
                });
            }
            if cx.rng.chance(60) {
                v.push(out(ip(src, dst, echo(8, 2)), "echo request again"));
            }
        }
        // INVALID to conntrack.
        8..=9 => {
            let (sport, dport) = (cx.client_port(), cx.port());
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
                    sport: cx.client_port(),
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
