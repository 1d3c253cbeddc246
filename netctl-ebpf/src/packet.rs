//! The fields the rules and conntrack look at, copied out of the packet.
//!
//! Copies (`bpf_skb_load_bytes`) rather than direct access: the IPv4 header
//! length varies, and a copy at a variable offset needs no bounds proof the
//! verifier must follow. This runs once per packet only while rules exist.

use aya_ebpf::programs::TcContext;

use crate::parse::{ETH_HLEN, ETH_P_IP, EthHdr, Ipv4Hdr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// What an ICMP error quotes: the tuple of the packet it is about.
#[derive(Clone, Copy, Default)]
pub struct Inner {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Clone, Copy, Default)]
pub struct Pkt {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub proto: u8,
    /// Ports (tcp/udp), or the echo identifier as both (ICMP queries).
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
    /// IPv4 total length: what iptables' byte counters add.
    pub ip_len: u32,
    /// The transport header was read (not a later fragment, not cut short).
    pub l4: bool,
    /// A fragment other than the first.
    pub later_fragment: bool,
    /// ICMP errors: the quoted packet's tuple, if `has_inner`. (Not an
    /// `Option`: writing a `None` into map memory leaves bytes undefined,
    /// which the verifier refuses.)
    pub inner: Inner,
    pub has_inner: bool,
}

/// ICMP types that report an error about another packet.
#[inline(always)]
pub fn icmp_is_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// ICMP queries that carry an identifier the kernel tracks by.
#[inline(always)]
pub fn icmp_has_id(t: u8) -> bool {
    matches!(t, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
}

/// Reads the IPv4 packet in the frame into `p`; false if the frame is not
/// one with a readable IPv4 header. `p` is a map value, not a return value,
/// to keep it off the small eBPF stack.
#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut Pkt) -> bool {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return false;
    };
    if u16::from_be_bytes(eth.proto) != ETH_P_IP {
        return false;
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN) else {
        return false;
    };
    let ihl = u32::from(ip.ver_ihl & 0x0f) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return false;
    }
    let frag = u16::from_be_bytes(ip.frag_off);
    *p = Pkt {
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.protocol,
        ip_len: u32::from(u16::from_be_bytes(ip.tot_len)),
        later_fragment: frag & 0x1fff != 0,
        ..Default::default()
    };
    if p.later_fragment {
        return true;
    }
    let off = ETH_HLEN + ihl as usize;
    match p.proto {
        PROTO_TCP => {
            let Ok(h) = ctx.load::<[u8; 14]>(off) else {
                return true;
            };
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.tcp_flags = h[13];
            p.l4 = true;
        }
        PROTO_UDP => {
            let Ok(h) = ctx.load::<[u8; 4]>(off) else {
                return true;
            };
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.l4 = true;
        }
        PROTO_ICMP => {
            let Ok(h) = ctx.load::<[u8; 8]>(off) else {
                return true;
            };
            p.icmp_type = h[0];
            p.icmp_code = h[1];
            p.l4 = true;
            if icmp_has_id(h[0]) {
                let id = u16::from_be_bytes([h[4], h[5]]);
                p.sport = id;
                p.dport = id;
            } else if icmp_is_error(h[0]) {
                p.has_inner = inner(ctx, off + 8, &mut p.inner);
            }
        }
        _ => p.l4 = true,
    }
    true
}

/// Reads the tuple of the packet an ICMP error quotes at `off` into `i`.
#[inline(always)]
fn inner(ctx: &TcContext, off: usize, i: &mut Inner) -> bool {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(off) else {
        return false;
    };
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return false;
    }
    i.saddr = ip.saddr;
    i.daddr = ip.daddr;
    i.proto = ip.protocol;
    i.sport = 0;
    i.dport = 0;
    match ip.protocol {
        PROTO_TCP | PROTO_UDP => {
            let Ok(h) = ctx.load::<[u8; 4]>(off + (ihl & 0x3c)) else {
                return false;
            };
            i.sport = u16::from_be_bytes([h[0], h[1]]);
            i.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMP => {
            let Ok(h) = ctx.load::<[u8; 8]>(off + (ihl & 0x3c)) else {
                return false;
            };
            if !icmp_has_id(h[0]) {
                return false;
            }
            let id = u16::from_be_bytes([h[4], h[5]]);
            i.sport = id;
            i.dport = id;
        }
        _ => {}
    }
    true
}
