//! Frames on the wire: Ethernet + IPv4 + TCP/UDP/ICMP built from a small
//! description, and received frames summarised into text that is the same
//! on both sides when the same thing happened (TTLs, ports, flags, what an
//! ICMP error quotes; not IP ids, checksums or MACs).

use std::fmt;
use std::net::Ipv4Addr;

/// EtherType of the harness's own marker frames (IEEE local experimental).
pub const ETH_P_MARK: u16 = 0x88b5;

pub type Mac = [u8; 6];

pub fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

pub mod tcpf {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The transport part of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: u16,
    },
    /// Echo request (8) / reply (0), and anything else without a quote.
    Icmp {
        typ: u8,
        code: u8,
        /// The 4 bytes after the checksum (echo: id << 16 | seq).
        rest: u32,
        payload: u16,
    },
    /// An ICMP error quoting (the start of) another packet.
    IcmpError { typ: u8, code: u8, quoted: Box<Ip> },
    /// Another IP protocol, with `payload` zero bytes.
    Raw { proto: u8, payload: u16 },
    /// A quoted TCP header cut short (an ICMP error quoting only the first
    /// `bytes` bytes of it): its ports.
    Cut {
        proto: u8,
        sport: u16,
        dport: u16,
        bytes: u16,
    },
}

/// An IPv4 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub l4: L4,
}

impl Ip {
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } | L4::IcmpError { .. } => 1,
            L4::Raw { proto, .. } | L4::Cut { proto, .. } => proto,
        }
    }

    /// The IP packet's bytes (header and payload, checksums filled in).
    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let total = 20 + l4.len();
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto();
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }

    /// Length of the IP packet, what iptables' byte counters add.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    fn pseudo(&self, len: usize) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0..4].copy_from_slice(&self.src.octets());
        p[4..8].copy_from_slice(&self.dst.octets());
        p[9] = self.proto();
        p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        p
    }

    fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                payload,
            } => {
                let mut t = vec![0u8; 20 + *payload as usize];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[4..8].copy_from_slice(&seq.to_be_bytes());
                t[8..12].copy_from_slice(&ack.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = *flags;
                t[14..16].copy_from_slice(&64240u16.to_be_bytes());
                for (i, b) in t[20..].iter_mut().enumerate() {
                    *b = b'a' + (i % 26) as u8;
                }
                let c = checksum(&[&self.pseudo(t.len()), &t]);
                t[16..18].copy_from_slice(&c.to_be_bytes());
                t
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut u = vec![0u8; 8 + *payload as usize];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                let ulen = u.len() as u16;
                u[4..6].copy_from_slice(&ulen.to_be_bytes());
                for (i, b) in u[8..].iter_mut().enumerate() {
                    *b = b'A' + (i % 26) as u8;
                }
                let mut c = checksum(&[&self.pseudo(u.len()), &u]);
                if c == 0 {
                    c = 0xffff;
                }
                u[6..8].copy_from_slice(&c.to_be_bytes());
                u
            }
            L4::Icmp {
                typ,
                code,
                rest,
                payload,
            } => {
                let mut m = vec![0u8; 8 + *payload as usize];
                m[0] = *typ;
                m[1] = *code;
                m[4..8].copy_from_slice(&rest.to_be_bytes());
                for (i, b) in m[8..].iter_mut().enumerate() {
                    *b = i as u8;
                }
                let c = checksum(&[&m]);
                m[2..4].copy_from_slice(&c.to_be_bytes());
                m
            }
            L4::IcmpError { typ, code, quoted } => {
                let q = quoted.bytes();
                // The IP header and the first 8 bytes of the payload, as
                // RFC 792 asks (the kernel quotes more; conntrack needs 8).
                let n = q.len().min(28);
                let mut m = vec![0u8; 8];
                m[0] = *typ;
                m[1] = *code;
                m.extend_from_slice(&q[..n]);
                let c = checksum(&[&m]);
                m[2..4].copy_from_slice(&c.to_be_bytes());
                m
            }
            L4::Raw { payload, .. } => vec![0u8; *payload as usize],
            L4::Cut { sport, dport, .. } => {
                let mut t = vec![0u8; 8];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t
            }
        }
    }

    /// Parses an IPv4 packet (as much as this harness sends or expects).
    pub fn parse(b: &[u8]) -> Option<Ip> {
        if b.len() < 20 || b[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((b[0] & 0xf) as usize) * 4;
        let total = (u16::from_be_bytes([b[2], b[3]]) as usize).min(b.len());
        if b.len() < ihl || total < ihl {
            return None;
        }
        let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        let p = &b[ihl..total];
        // Quoted packets are truncated: lengths come from the IP header.
        let plen = (u16::from_be_bytes([b[2], b[3]]) as usize).saturating_sub(ihl);
        let l4 = match b[9] {
            6 if p.len() >= 14 => L4::Tcp {
                sport: u16::from_be_bytes([p[0], p[1]]),
                dport: u16::from_be_bytes([p[2], p[3]]),
                seq: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                ack: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                flags: p[13],
                payload: plen.saturating_sub(((p[12] >> 4) as usize) * 4) as u16,
            },
            6 if p.len() >= 4 => L4::Cut {
                proto: 6,
                sport: u16::from_be_bytes([p[0], p[1]]),
                dport: u16::from_be_bytes([p[2], p[3]]),
                bytes: p.len() as u16,
            },
            17 if p.len() >= 4 => L4::Udp {
                sport: u16::from_be_bytes([p[0], p[1]]),
                dport: u16::from_be_bytes([p[2], p[3]]),
                payload: plen.saturating_sub(8) as u16,
            },
            1 if p.len() >= 8 => {
                let (typ, code) = (p[0], p[1]);
                if matches!(typ, 3 | 4 | 5 | 11 | 12) {
                    L4::IcmpError {
                        typ,
                        code,
                        quoted: Box::new(Ip::parse(&p[8..])?),
                    }
                } else {
                    L4::Icmp {
                        typ,
                        code,
                        rest: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                        payload: plen.saturating_sub(8) as u16,
                    }
                }
            }
            proto => L4::Raw {
                proto,
                payload: plen as u16,
            },
        };
        Some(Ip {
            src,
            dst,
            ttl: b[8],
            id: u16::from_be_bytes([b[4], b[5]]),
            l4,
        })
    }

    /// The fields that identify the packet's flow for conntrack, source
    /// side first: `(proto, src, sport/id, dst, dport)`.
    pub fn tuple(&self) -> (u8, Ipv4Addr, u16, Ipv4Addr, u16) {
        let (s, d) = match self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (sport, dport),
            L4::Icmp { rest, .. } => ((rest >> 16) as u16, 0),
            _ => (0, 0),
        };
        (self.proto(), self.src, s, self.dst, d)
    }
}

/// A summary that does not depend on who built the packet: no IP id,
/// checksum or MAC. Used to compare what arrived on both sides.
impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary_with(&|_, _, _| None))
    }
}

impl Ip {
    /// The summary, with the ports (TCP, UDP) and query identifiers
    /// (ICMP) that `name(proto, address, port)` names written as it says;
    /// an endpoint is the port with the address beside it (source or
    /// destination), a query identifier goes with either address. Quoted
    /// packets too.
    pub fn summary_with(&self, name: &dyn Fn(u8, Ipv4Addr, u16) -> Option<String>) -> String {
        let proto = self.proto();
        let port = |a: Ipv4Addr, p: u16| name(proto, a, p).unwrap_or_else(|| p.to_string());
        let head = format!("{} > {} ttl {} ", self.src, self.dst, self.ttl);
        let l4 = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                payload,
            } => {
                let names = [
                    (tcpf::SYN, "S"),
                    (tcpf::FIN, "F"),
                    (tcpf::RST, "R"),
                    (tcpf::PSH, "P"),
                    (tcpf::ACK, "."),
                ];
                let fl: String = names
                    .iter()
                    .filter(|(b, _)| flags & b != 0)
                    .map(|(_, n)| *n)
                    .collect();
                format!(
                    "tcp {} > {} [{fl}] seq {seq} ack {ack} len {payload}",
                    port(self.src, *sport),
                    port(self.dst, *dport)
                )
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => format!(
                "udp {} > {} len {payload}",
                port(self.src, *sport),
                port(self.dst, *dport)
            ),
            L4::Icmp {
                typ,
                code,
                rest,
                payload,
            } => {
                let id = (rest >> 16) as u16;
                let id = name(proto, self.src, id)
                    .or_else(|| name(proto, self.dst, id))
                    .unwrap_or_else(|| id.to_string());
                format!(
                    "icmp type {typ} code {code} id {id} seq {} len {payload}",
                    rest & 0xffff
                )
            }
            L4::IcmpError { typ, code, quoted } => format!(
                "icmp type {typ} code {code} quoting [{}]",
                quoted.summary_with(name)
            ),
            L4::Raw { proto, payload } => format!("proto {proto} len {payload}"),
            L4::Cut {
                proto,
                sport,
                dport,
                bytes,
            } => format!(
                "proto {proto} {} > {} (first {bytes} bytes only)",
                name(*proto, self.src, *sport).unwrap_or_else(|| sport.to_string()),
                name(*proto, self.dst, *dport).unwrap_or_else(|| dport.to_string()),
            ),
        };
        head + &l4
    }
}

/// The Internet checksum over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(h) => sum += u32::from(u16::from_be_bytes([h, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(h) = odd {
        sum += u32::from(u16::from_be_bytes([h, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying `ip`.
pub fn ether_ip(dst: &Mac, src: &Mac, ip: &Ip) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 64);
    f.extend_from_slice(dst);
    f.extend_from_slice(src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip.bytes());
    f
}

/// A marker frame: the harness's EtherType and a 64-bit token.
pub fn marker(dst: &Mac, src: &Mac, token: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(dst);
    f.extend_from_slice(src);
    f.extend_from_slice(&ETH_P_MARK.to_be_bytes());
    f.extend_from_slice(b"NCFID");
    f.extend_from_slice(&token.to_be_bytes());
    f.resize(60, 0);
    f
}

/// What a received frame is, for the harness.
#[derive(Debug, PartialEq, Eq)]
pub enum Rx {
    Marker(u64),
    Ip(Ip),
    Other,
}

pub fn classify(frame: &[u8]) -> Rx {
    if frame.len() < 14 {
        return Rx::Other;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_MARK if frame.len() >= 27 && &frame[14..19] == b"NCFID" => {
            Rx::Marker(u64::from_be_bytes(frame[19..27].try_into().unwrap()))
        }
        0x0800 => Ip::parse(&frame[14..]).map_or(Rx::Other, Rx::Ip),
        _ => Rx::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksums() {
        let inner = Ip {
            src: Ipv4Addr::new(10, 1, 0, 2),
            dst: Ipv4Addr::new(10, 2, 0, 2),
            ttl: 64,
            id: 7,
            l4: L4::Udp {
                sport: 1000,
                dport: 53,
                payload: 10,
            },
        };
        let b = inner.bytes();
        assert_eq!(checksum(&[&b[..20]]), 0);
        assert_eq!(Ip::parse(&b).unwrap(), inner);
        let err = Ip {
            src: Ipv4Addr::new(10, 2, 0, 2),
            dst: Ipv4Addr::new(10, 1, 0, 2),
            ttl: 64,
            id: 1,
            l4: L4::IcmpError {
                typ: 3,
                code: 3,
                quoted: Box::new(inner.clone()),
            },
        };
        let p = Ip::parse(&err.bytes()).unwrap();
        assert!(
            p.to_string().contains("quoting [10.1.0.2 > 10.2.0.2"),
            "{p}"
        );
        let t = Ip {
            l4: L4::Tcp {
                sport: 1,
                dport: 2,
                seq: 3,
                ack: 4,
                flags: tcpf::SYN,
                payload: 3,
            },
            ..inner
        };
        let tb = t.bytes();
        let mut pseudo = t.pseudo(tb.len() - 20).to_vec();
        pseudo.extend_from_slice(&tb[20..]);
        assert_eq!(checksum(&[&pseudo]), 0);
        assert_eq!(Ip::parse(&tb).unwrap(), t);
    }
}
