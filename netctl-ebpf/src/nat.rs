//! NAT over conntrack, as the kernel's nf_nat does it: the nat table is
//! walked for a connection's first packet only; the binding it chooses is
//! kept in the connection's entry, and every later packet is rewritten from
//! that binding — the original direction forwards, the reply direction
//! back. The destination half is applied before the route decision (the
//! kernel's PREROUTING), the source half after the rules (POSTROUTING).
//!
//! A translated connection's reply tuple is not its original one, so
//! `NETCTL_CT_NAT` maps the reply tuple to the entry's key. Source ports
//! are reallocated when the translated tuple would collide with another
//! connection's reply tuple.
//!
//! Every rewrite fixes the IPv4 header checksum and the TCP, UDP (a zero
//! UDP checksum stays zero) or ICMP checksum incrementally, which also
//! works for packets whose transport checksum the kernel has yet to finish
//! (CHECKSUM_PARTIAL, as from a container's own socket).

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use netctl_common::{
    CtKey, NAT_SRC_SLOTS, NatSrc, NatSrcKey, RS_NAT_MAX, config, ct_flag, nat_bit, nat_kind,
    nat_range,
};

use crate::{
    classify,
    conntrack::{self, key},
    maps::{self, NETCTL_CT, NETCTL_CT_NAT, NETCTL_IFADDR, NETCTL_NAT_SRC, NETCTL_RS_NAT},
    packet::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Pkt},
    parse::ETH_HLEN,
};

/// Tries at a free source port before the connection is dropped.
const PORT_TRIES: u32 = 16;

/// The binding's destination half, for a packet of a translated
/// connection: the original direction's DNAT, or the reply direction's
/// undoing of SNAT. Returns 1 if the packet was rewritten (its route must
/// be decided on the new header), 0 if not, -1 if a rewrite failed.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_dst(skb: *mut __sk_buff) -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    let Some((addr, port)) = live_rewrite(s, false) else {
        return 0;
    };
    let ctx = TcContext::new(skb);
    if rewrite(&ctx, &mut s.pkt, false, addr, port) {
        1
    } else {
        -1
    }
}

/// What the live entry's binding (as `netctl_track` copied it) makes of
/// the packet's source (`src`) or destination: the original direction's
/// translation of that half, or the reply direction's undoing of the
/// other half's. None: the packet has no live entry, or nothing to change.
#[inline(always)]
fn live_rewrite(s: &classify::Scratch, src: bool) -> Option<([u8; 4], u16)> {
    let t = s.track;
    if (t >> 24) & 1 == 0 {
        return None;
    }
    let nat = s.live_nat;
    let reply = (t >> 8) & 1 != 0;
    let (own, other) = if src {
        (nat_bit::SRC, nat_bit::DST)
    } else {
        (nat_bit::DST, nat_bit::SRC)
    };
    if !reply && nat.flags & own != 0 {
        Some(if src {
            (nat.snat_addr, nat.snat_port)
        } else {
            (nat.dnat_addr, nat.dnat_port)
        })
    } else if reply && nat.flags & other != 0 {
        // Back to the originator, or from where it first sent to.
        Some(if src {
            other_end(&s.ct_key, s.live_orig_addr, s.live_orig_port)
        } else {
            (s.live_orig_addr, s.live_orig_port)
        })
    } else {
        None
    }
}

/// The binding's source half, after the rules accepted the packet: the
/// original direction's SNAT, or the reply direction's undoing of DNAT.
/// For a connection's first packet, the nat table's choices (in the
/// scratch map) become its binding first, and its entry is created.
/// `out_if` is the outgoing interface (MASQUERADE takes its address).
/// `dropped`: the kernel drops the packet after PREROUTING; it gets no
/// source half, and a first packet's entry is left unconfirmed
/// (`ct_flag::UNCONFIRMED`).
/// Returns 1 if the source was rewritten, 0 if not, or -1 if the packet
/// must be dropped (no address to masquerade to, no free port, a failed
/// rewrite).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_src(skb: *mut __sk_buff, out_if: u32, dropped: u32) -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    // The scratch map still holds the last packet this CPU judged when
    // this one was not parsed (not IPv4): nothing of it may be used.
    if s.parsed == 0 {
        return 0;
    }
    if s.icmp_src_half.pending != 0 && dropped == 0 {
        return netctl_nat_icmp_src(skb);
    }
    let t = s.track;
    let ctx = TcContext::new(skb);
    if (t >> 24) & 1 != 0 {
        if dropped != 0 {
            return 0;
        }
        let Some((addr, port)) = live_rewrite(s, true) else {
            return 0;
        };
        return if rewrite(&ctx, &mut s.pkt, true, addr, port) {
            1
        } else {
            -1
        };
    }
    // A connection's first packet: only it gets a binding.
    let clash = s.ct_key.clash != 0;
    if (t >> 16) & 1 == 0 || s.nat[0] | s.nat[1] == 0 && !clash {
        return 0;
    }
    if dropped == 0 {
        // Without a source NAT rule, the kernel's null binding: the
        // source as it is, its port remapped if the reply tuple is taken
        // (which it is for a clashing tuple, see `CtKey::clash`, unless a
        // destination NAT moved the connection; or after a destination
        // NAT, by another connection to the same new destination).
        let a = if s.nat[1] != 0 {
            action(s.nat[1])
        } else {
            Some(netctl_common::RsNat {
                kind: nat_kind::SNAT,
                addr_min: s.pkt.saddr,
                addr_max: s.pkt.saddr,
                ..Default::default()
            })
        };
        let Some(a) = a else {
            return -1;
        };
        let Some(addr) = to_addr(&a, out_if, &s.pkt) else {
            return -1;
        };
        let (addr, port) = match same_src(s, &a, addr) {
            Some(m) => m,
            None => {
                let Some(port) = free_port(s, addr, &a) else {
                    return -1;
                };
                (addr, port)
            }
        };
        // A translation to what the packet already has binds nothing, as
        // in the kernel (`nf_nat_setup_info` sets no NAT status then): the
        // connection's replies and ICMP errors stay as they are.
        if (addr, port) != (s.pkt.saddr, ports(&s.pkt).0) {
            if !rewrite(&ctx, &mut s.pkt, true, addr, port) {
                return -1;
            }
            s.binding.flags |= nat_bit::SRC;
            s.binding.snat_addr = addr;
            s.binding.snat_port = port;
        }
    }
    // The entry holds the original tuple; the reply tuple (the packet as it
    // now is, turned around) finds it through NETCTL_CT_NAT.
    let now = crate::clock::now();
    let orig = s.ct_key;
    // The first packet's walk included the nat table, which later packets
    // skip: its outcome is not theirs to replay.
    s.cache.serial = 0;
    let flags = if dropped != 0 {
        ct_flag::UNCONFIRMED
    } else {
        0
    };
    conntrack::confirm(
        &orig,
        s.ct_state,
        &s.orig_pkt,
        now,
        (&s.cache, flags),
        &mut s.entry,
    );
    if let Some(e) = NETCTL_CT.get_ptr_mut(orig) {
        // SAFETY: the element just created; nothing else knows it yet
        // but this connection's packets on other CPUs, which read the
        // binding only once it is complete.
        unsafe { (*e).nat = s.binding };
    }
    netctl_nat_reply_tuple();
    let translated = s.binding.flags & nat_bit::SRC != 0;
    if translated && s.nat[1] != 0 {
        netctl_nat_src_remember();
    }
    i32::from(translated)
}

/// The kernel's `find_appropriate_src` for a first packet whose source NAT
/// rule `a` (MASQUERADE: to `addr`) does not already cover its source: the
/// mapping of the newest live connection from the same source whose
/// mapping the rule's range covers, if its tuple is free with this
/// packet's destination. The kernel looks no further than that one
/// (`get_unique_tuple`): None sends the packet to the address pick and the
/// port search.
#[inline(always)]
fn same_src(
    s: *mut classify::Scratch,
    a: &netctl_common::RsNat,
    addr: [u8; 4],
) -> Option<([u8; 4], u16)> {
    // SAFETY: this CPU's scratch element; only `candidate` is written
    // below, through the pointer, while `p` and `rule` read other fields.
    let (p, rule) = unsafe { (&(*s).pkt, (*s).nat[1]) };
    if rule == 0 {
        // The null binding's range is the source itself: always covered.
        return None;
    }
    let (lo, hi) = if a.kind == nat_kind::MASQUERADE {
        (u32::from_be_bytes(addr), u32::from_be_bytes(addr))
    } else {
        (
            u32::from_be_bytes(a.addr_min),
            u32::from_be_bytes(a.addr_max),
        )
    };
    let with_ports = a.flags & nat_range::PORTS != 0 && has_ports(p.proto);
    let (sport, dport) = ports(p);
    let src = u32::from_be_bytes(p.saddr);
    let covered =
        src >= lo && src <= hi && (!with_ports || sport >= a.port_min && sport <= a.port_max);
    if covered {
        return None;
    }
    let now = crate::clock::now();
    let span = (u32::from(a.port_min) << 16) | u32::from(a.port_max);
    let m = netctl_nat_same_src(lo, hi, span, u32::from(with_ports), now);
    if m == 0 {
        return None;
    }
    let (maddr, mport) = (((m >> 16) as u32).to_be_bytes(), m as u16);
    ask_taken(
        s,
        p.proto,
        (maddr, mport),
        (p.daddr, dport_for(p, mport, dport)),
    );
    (netctl_nat_taken(now) == 0).then_some((maddr, mport))
}

/// The newest live connection remembered for the first packet's original
/// source (`NETCTL_NAT_SRC`) whose translated source lies in addresses
/// `lo..=hi` (host order) and, if `with_ports`, ports `span >> 16 ..=
/// span & 0xffff`: `1 << 48 | address << 16 | port`, or 0. A global
/// function: its lookups stay off `netctl_nat_src`'s frame.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_same_src(
    lo: u32,
    hi: u32,
    span: u32,
    with_ports: u32,
    now: u64,
) -> u64 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let p = unsafe { &(*s).orig_pkt };
    let sport = ports(p).0;
    let k = src_key(p.proto, p.saddr, sport);
    let Some(v) = NETCTL_NAT_SRC.get_ptr(k) else {
        return 0;
    };
    let (pmin, pmax) = ((span >> 16) as u16, span as u16);
    let mut i = 0;
    while i < NAT_SRC_SLOTS {
        // SAFETY: a live element, a `CtKey` copied whole; `i` is in bounds.
        let c = unsafe { *(*v).conns.as_ptr().add(i) };
        i += 1;
        if c.proto != p.proto {
            continue;
        }
        // Only a live, confirmed connection opened from this source with
        // its source translated is in the kernel's list.
        let Some(e) = conntrack::live(&c, now) else {
            continue;
        };
        if !conntrack::confirmed(e) || !conntrack::opened(e, p.saddr, sport) {
            continue;
        }
        // SAFETY: a live element (see `conntrack::live`), read whole.
        let n = unsafe { (*e).nat };
        if n.flags & nat_bit::SRC == 0 {
            continue;
        }
        let a = u32::from_be_bytes(n.snat_addr);
        if a < lo || a > hi || with_ports != 0 && (n.snat_port < pmin || n.snat_port > pmax) {
            continue;
        }
        return (1 << 48) | (u64::from(a) << 16) | u64::from(n.snat_port);
    }
    0
}

/// Puts the connection `netctl_nat_src` has just translated first among
/// those remembered for its original source (`NETCTL_NAT_SRC`), as the
/// kernel adds it at the head of its source's list.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_src_remember() -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let (p, own) = unsafe { (&(*s).orig_pkt, (*s).ct_key) };
    let k = src_key(p.proto, p.saddr, ports(p).0);
    let Some(v) = NETCTL_NAT_SRC.get_ptr_mut(k) else {
        let mut n = NatSrc::default();
        n.conns[0] = own;
        // A full table evicts its least recently used element (LRU).
        let _ = NETCTL_NAT_SRC.insert(k, n, 0);
        return 0;
    };
    // SAFETY: a live element; another CPU remembering a connection of
    // the same source meanwhile may lose one of the two, which only
    // makes a later connection search for a port as the kernel does
    // when its list holds nothing in range.
    let c = unsafe { &mut (*v).conns };
    // Where `own` was (a reopened connection), else the oldest slot: the
    // slots before it move down by one.
    let at = c
        .iter()
        .position(|x| *x == own)
        .unwrap_or(NAT_SRC_SLOTS - 1);
    let (c0, c1, c2) = (c[0], c[1], c[2]);
    if at >= 3 {
        c[3] = c2;
    }
    if at >= 2 {
        c[2] = c1;
    }
    if at >= 1 {
        c[1] = c0;
    }
    c[0] = own;
    0
}

#[inline(always)]
fn src_key(proto: u8, addr: [u8; 4], port: u16) -> NatSrcKey {
    NatSrcKey {
        proto,
        _pad: 0,
        port,
        addr,
    }
}

/// Files the reply tuple of the connection `netctl_nat_src` has just
/// created (the packet as it now is, turned around) under its key. A
/// function of its own, to keep the keys off `netctl_nat_src`'s frame,
/// which lies on the deepest call chains.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_reply_tuple() -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &*s };
    let orig = s.ct_key;
    let p = &s.pkt;
    let rk = key(p.proto, p.saddr, ports(p).0, p.daddr, ports(p).1);
    if rk != orig {
        // A reused reply tuple usually leads to the same key already, and
        // is otherwise rewritten in place (see `conntrack::confirm`).
        match NETCTL_CT_NAT.get_ptr_mut(rk) {
            // SAFETY: a live element, a `CtKey` written whole by this CPU.
            Some(p) => unsafe {
                if *p != orig {
                    *p = orig;
                }
            },
            // A full table evicts its least recently used element (LRU).
            None => {
                let _ = NETCTL_CT_NAT.insert(rk, orig, 0);
            }
        }
    }
    0
}

/// Applies the destination NAT the nat table chose at PREROUTING for a
/// connection's first packet (`scratch.nat[0]`): DNAT to its address and
/// port, REDIRECT to the incoming interface's address. Returns 0, or -1 if
/// the packet must be dropped.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_new_dst(skb: *mut __sk_buff, in_if: u32) -> i32 {
    let Some(s) = classify::scratch() else {
        return -1;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    let Some(a) = action(s.nat[0]) else {
        return -1;
    };
    let Some(addr) = to_addr(&a, in_if, &s.pkt) else {
        return -1;
    };
    let old = ports(&s.pkt).1;
    let port = if a.flags & nat_range::PORTS != 0 && has_ports(s.pkt.proto) {
        dst_port(s, addr, &a, old)
    } else {
        old
    };
    // As in `netctl_nat_src`: a translation to what the packet has binds
    // nothing.
    if (addr, port) == (s.pkt.daddr, old) {
        return 0;
    }
    let ctx = TcContext::new(skb);
    if !rewrite(&ctx, &mut s.pkt, false, addr, port) {
        return -1;
    }
    s.binding.flags |= nat_bit::DST;
    s.binding.dnat_addr = addr;
    s.binding.dnat_port = port;
    0
}

/// Tries at a free destination port in a DNAT or REDIRECT port range.
const DST_PORT_TRIES: u16 = 32;

/// The destination port DNAT or REDIRECT to `addr` with a port range gives
/// the packet, whose destination port is `old`, as the kernel chooses it
/// (`get_unique_tuple`, `nf_nat_l4proto_unique_tuple`): `old` if the range
/// holds it and the tuple is free (or the range is one port), else the
/// first port of the range whose tuple is free — a destination's search
/// starts at the range's first port, not at a random one. With every port
/// of the range taken, the last, as the kernel ends (the source's null
/// binding then remaps the source port); a range wider than
/// `DST_PORT_TRIES` is searched no further than its first
/// `DST_PORT_TRIES + 1` ports (the kernel's search goes on to 128).
#[inline(always)]
fn dst_port(s: *mut classify::Scratch, addr: [u8; 4], a: &netctl_common::RsNat, old: u16) -> u16 {
    let (lo, hi) = (a.port_min, a.port_max.max(a.port_min));
    let now = crate::clock::now();
    if old >= lo && old <= hi && (lo == hi || !dst_taken(s, addr, old, now)) {
        return old;
    }
    let mut port = lo;
    let mut i = 0;
    while i < DST_PORT_TRIES {
        if !dst_taken(s, addr, port, now) || port == hi {
            break;
        }
        port += 1;
        i += 1;
    }
    port
}

/// Whether another live connection has the tuple of the packet with its
/// destination translated to `addr`/`port`.
#[inline(always)]
fn dst_taken(s: *mut classify::Scratch, addr: [u8; 4], port: u16, now: u64) -> bool {
    // SAFETY: this CPU's scratch element; `pkt` is read, and only the
    // question's fields written.
    let p = unsafe { &(*s).pkt };
    ask_taken(s, p.proto, (p.saddr, ports(p).0), (addr, port));
    netctl_nat_taken(now) != 0
}

/// Translates the ICMP error a REJECT has just written into `skb` about
/// the refused packet, whose connection (or, for its first packet, the
/// binding being built) is translated: the quoted packet's destination,
/// and the error's source, become the original destination (DNAT) or the
/// SNAT address (a refused reply) — what the kernel's nat hooks make of
/// the answer (`nf_nat_icmp_reply_translation`). Returns 0 (nothing to
/// do), 1 (translated) or -1.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_answer(skb: *mut __sk_buff) -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element, still about the refused packet.
    let s = unsafe { &mut *s };
    if s.parsed == 0 {
        return 0;
    }
    let t = s.track;
    let (first, live, reply) = ((t >> 16) & 1 != 0, (t >> 24) & 1 != 0, (t >> 8) & 1 != 0);
    // The source NAT hook's half of the kernel's translation of an error
    // about the packet (the first hook's changes nothing the refused packet
    // does not already have): the quoted destination, and the error's
    // source, become where the packet's direction seemed to go — before a
    // DNAT for the original direction, the SNAT address for replies.
    let to = if first && s.binding.flags & nat_bit::DST != 0 {
        (s.orig_pkt.daddr, ports(&s.orig_pkt).1)
    } else if live && !reply && s.live_nat.flags & nat_bit::DST != 0 {
        other_end(&s.ct_key, s.live_orig_addr, s.live_orig_port)
    } else if live && reply && s.live_nat.flags & nat_bit::SRC != 0 {
        (s.live_nat.snat_addr, s.live_nat.snat_port)
    } else {
        return 0;
    };
    let ctx = TcContext::new(skb);
    // The answer: IPv4 (no options, as `reject` writes it), ICMP, the
    // quoted header and its first 8 bytes.
    let iip = ETH_HLEN + 28;
    let Ok(q) = ctx.load::<[u8; 28]>(iip) else {
        return -1;
    };
    let Ok(outer_src) = ctx.load::<[u8; 4]>(ETH_HLEN + 12) else {
        return -1;
    };
    let il4 = iip + usize::from(q[0] & 0x0f) * 4;
    let (proto, qdst) = (q[9], [q[16], q[17], q[18], q[19]]);
    let icsum = ETH_HLEN + 22;
    let tcsum = match proto {
        PROTO_TCP => il4 + 16,
        PROTO_UDP => il4 + 6,
        _ => 0,
    };
    if !quoted_addr(&ctx, iip, iip + 16, tcsum, icsum, qdst, to.0) {
        return -1;
    }
    if matches!(proto, PROTO_TCP | PROTO_UDP) {
        let Ok(dp) = ctx.load::<[u8; 2]>(il4 + 2) else {
            return -1;
        };
        if !quoted_port(&ctx, il4 + 2, tcsum, icsum, u16::from_be_bytes(dp), to.1) {
            return -1;
        }
    }
    let mut p = Pkt {
        saddr: outer_src,
        proto: PROTO_ICMP,
        ..Pkt::default()
    };
    if !rewrite(&ctx, &mut p, true, to.0, 0) {
        return -1;
    }
    1
}

/// The live generation's NAT action `idx1 - 1`.
#[inline(always)]
fn action(idx1: u32) -> Option<netctl_common::RsNat> {
    let generation = maps::config(config::RULES_SERIAL) & 1;
    let i = idx1.checked_sub(1)?;
    if i >= RS_NAT_MAX {
        return None;
    }
    NETCTL_RS_NAT.get(generation * RS_NAT_MAX + i).copied()
}

/// The address action `a` translates the packet `p` to: MASQUERADE's and
/// REDIRECT's are the address of interface `ifindex` (outgoing,
/// incoming); SNAT keeps a source already in its range; otherwise the
/// kernel's pick from the range. `None` if the interface has none.
#[inline(always)]
fn to_addr(a: &netctl_common::RsNat, ifindex: u32, p: &Pkt) -> Option<[u8; 4]> {
    if a.kind == nat_kind::MASQUERADE || a.kind == nat_kind::REDIRECT {
        // SAFETY: a live element, four bytes, copied at once.
        return NETCTL_IFADDR.get_ptr(ifindex).map(|p| unsafe { *p });
    }
    let (lo, hi) = (
        u32::from_be_bytes(a.addr_min),
        u32::from_be_bytes(a.addr_max),
    );
    let src = u32::from_be_bytes(p.saddr);
    if a.kind == nat_kind::SNAT && src >= lo && src <= hi {
        return Some(p.saddr);
    }
    Some(netctl_common::nat_range_pick(
        p.saddr, p.daddr, a.addr_min, a.addr_max,
    ))
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP)
}

/// The (source, destination) "ports" conntrack keys by: TCP/UDP ports,
/// the ICMP query identifier on both sides, 0 otherwise.
#[inline(always)]
fn ports(p: &Pkt) -> (u16, u16) {
    match p.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => (p.sport, p.dport),
        _ => (0, 0),
    }
}

/// The endpoint of `k` that is not the originator.
#[inline(always)]
fn other_end(k: &CtKey, orig_addr: [u8; 4], orig_port: u16) -> ([u8; 4], u16) {
    if k.a_addr == orig_addr && k.a_port == orig_port {
        (k.b_addr, k.b_port)
    } else {
        (k.a_addr, k.a_port)
    }
}

/// A source port (ICMP: identifier) for the packet translated to source
/// `addr` whose reply tuple no other connection uses: the packet's own if
/// it is free and allowed, else one of the range (`--to-ports`, or the
/// kernel's default class of the original port: 1–511, 600–1023,
/// 1024–65535). None if there is none (for a protocol without ports:
/// if its one tuple is taken).
#[inline(always)]
fn free_port(s: *mut classify::Scratch, addr: [u8; 4], a: &netctl_common::RsNat) -> Option<u16> {
    // SAFETY: this CPU's scratch element; only `candidate` is written
    // below, through the pointer, while `p` reads another field.
    let p = unsafe { &(*s).pkt };
    let now = crate::clock::now();
    let (sport, dport) = ports(p);
    let (lo, hi) = if a.flags & nat_range::PORTS != 0 && has_ports(p.proto) {
        (a.port_min, a.port_max.max(a.port_min))
    } else if p.proto == PROTO_ICMP {
        (0, u16::MAX)
    } else if !has_ports(p.proto) {
        // Nothing to remap: a taken tuple clashes, and the kernel drops
        // the packet when it confirms the connection.
        ask_taken(s, p.proto, (addr, 0), (p.daddr, 0));
        return (netctl_nat_taken(now) == 0).then_some(0);
    } else if sport < 512 {
        (1, 511)
    } else if sport < 1024 {
        (600, 1023)
    } else {
        (1024, u16::MAX)
    };
    let span = u32::from(hi - lo) + 1;
    let mut port = if sport >= lo && sport <= hi {
        sport
    } else {
        lo
    };
    let mut i = 0;
    while i < PORT_TRIES {
        ask_taken(
            s,
            p.proto,
            (addr, port),
            (p.daddr, dport_for(p, port, dport)),
        );
        if netctl_nat_taken(now) == 0 {
            return Some(port);
        }
        // SAFETY: the helper takes no arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        port = lo.wrapping_add((r % span) as u16);
        i += 1;
    }
    None
}

/// ICMP queries carry one identifier for both "ports".
#[inline(always)]
fn dport_for(p: &Pkt, sport: u16, dport: u16) -> u16 {
    if p.proto == PROTO_ICMP { sport } else { dport }
}

/// Readies `netctl_nat_taken`'s question: is the tuple from `src` to `dst`
/// free for the connection being set up?
#[inline(always)]
fn ask_taken(s: *mut classify::Scratch, proto: u8, src: ([u8; 4], u16), dst: ([u8; 4], u16)) {
    // SAFETY: this CPU's scratch element; only these fields are written.
    unsafe {
        (*s).candidate = key(proto, src.0, src.1, dst.0, dst.1);
        (*s).candidate_src = src.0;
        (*s).candidate_sport = src.1;
    }
}

/// Whether the tuple in the scratch map's `candidate` is taken for the
/// connection being set up (the scratch map's `ct_key`, which may reopen
/// its old entry), as the kernel's `nf_nat_used_tuple` says: whether
/// another live connection already has, as its original tuple or as its
/// reply tuple, the reply tuple the new connection would get (the
/// candidate turned around). Returns 1 if so. A global function: the port
/// searches ask up to `PORT_TRIES` times, and the verifier then checks
/// this once.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_taken(now: u64) -> u32 {
    // Two functions, one after the other: their frames, which the deepest
    // call chains (a DNAT port search under `netctl_filter`) cannot
    // afford together, are never on the stack at once.
    if netctl_nat_taken_orig(now) != 0 {
        return 1;
    }
    netctl_nat_taken_reply(now)
}

/// `netctl_nat_taken`'s first half: another live connection's original
/// tuple.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_taken_orig(now: u64) -> u32 {
    let Some(s) = classify::scratch() else {
        return 1;
    };
    // SAFETY: this CPU's scratch element (read in place, as below).
    let k = unsafe { &(*s).candidate };
    if *k == unsafe { (*s).ct_key } {
        return 0;
    }
    // Unconfirmed connections are in no table: they take nothing.
    let Some(e) = conntrack::live(k, now).filter(|e| conntrack::confirmed(*e)) else {
        return 0;
    };
    // Its key is the candidate's, so the candidate is its original tuple
    // or that turned around. Turned around, it is taken; as it is, only if
    // the connection's reply tuple is its original turned around (nothing
    // translated it).
    // SAFETY: a live element (see `conntrack::live`); this CPU's scratch
    // element.
    let (nat, src, sport) = unsafe { ((*e).nat.flags, (*s).candidate_src, (*s).candidate_sport) };
    u32::from(nat & (nat_bit::SRC | nat_bit::DST) == 0 || !conntrack::opened(e, src, sport))
}

/// `netctl_nat_taken`'s second half: another live connection's reply
/// tuple.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_taken_reply(now: u64) -> u32 {
    let Some(s) = classify::scratch() else {
        return 1;
    };
    // The tuples are read where they are, in the scratch map, rather than
    // copied: copies spill field by field around the lookups, and this
    // frame lies on the deepest chains.
    // SAFETY: this CPU's scratch element.
    let k = unsafe { &(*s).candidate };
    let Some((o, e)) = conntrack::nat_owner(k, now) else {
        return 0;
    };
    // SAFETY: as above.
    if o == unsafe { (*s).ct_key } || !conntrack::confirmed(e) {
        return 0;
    }
    // The candidate is the reply tuple or that turned around: taken only
    // turned around (the new connection's reply tuple would be this one's),
    // that is when it comes from where the reply tuple goes.
    // SAFETY: as above.
    let from = unsafe { ((*s).candidate_src, (*s).candidate_sport) };
    // SAFETY: a live element (see `conntrack::nat_owner`).
    u32::from(conntrack::reply_dst(unsafe { &*e }) == from)
}

/// Rewrites the packet's source (`src`) or destination address and port
/// to `addr`/`port`, with incremental checksum updates, and keeps `p` in
/// step. False if the packet could not be written.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &mut Pkt, src: bool, addr: [u8; 4], port: u16) -> bool {
    let Ok(ver_ihl) = ctx.load::<u8>(ETH_HLEN) else {
        return false;
    };
    let l4 = ETH_HLEN + usize::from(ver_ihl & 0x0f) * 4;
    let (old_addr, addr_off) = if src {
        (p.saddr, ETH_HLEN + 12)
    } else {
        (p.daddr, ETH_HLEN + 16)
    };
    let (csum_off, udp) = match p.proto {
        PROTO_TCP => (l4 + 16, false),
        PROTO_UDP => (l4 + 6, true),
        PROTO_ICMP => (l4 + 2, false),
        _ => (0, false),
    };
    let l4_ok = p.l4 && !p.later_fragment && csum_off != 0;
    if old_addr != addr {
        let (from, to) = (
            u64::from(u32::from_ne_bytes(old_addr)),
            u64::from(u32::from_ne_bytes(addr)),
        );
        // ICMP's checksum covers no pseudo-header; TCP's and UDP's do.
        if l4_ok && p.proto != PROTO_ICMP {
            let mangled = if udp {
                u64::from(BPF_F_MARK_MANGLED_0)
            } else {
                0
            };
            let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
            if ctx.l4_csum_replace(csum_off, from, to, flags).is_err() {
                return false;
            }
        }
        if ctx.l3_csum_replace(ETH_HLEN + 10, from, to, 4).is_err() {
            return false;
        }
        if ctx.store(addr_off, &addr, 0).is_err() {
            return false;
        }
        if src {
            p.saddr = addr;
        } else {
            p.daddr = addr;
        }
    }
    let (old_port, port_off) = match p.proto {
        PROTO_ICMP => (p.sport, l4 + 4),
        _ if src => (p.sport, l4),
        _ => (p.dport, l4 + 2),
    };
    let ported = has_ports(p.proto) || p.proto == PROTO_ICMP && p.sport == p.dport;
    if l4_ok && ported && old_port != port {
        let (from, to) = (
            u64::from(u16::from_ne_bytes(old_port.to_be_bytes())),
            u64::from(u16::from_ne_bytes(port.to_be_bytes())),
        );
        let mangled = if udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if ctx
            .l4_csum_replace(csum_off, from, to, mangled | 2)
            .is_err()
        {
            return false;
        }
        if ctx.store(port_off, &port.to_be_bytes(), 0).is_err() {
            return false;
        }
        if p.proto == PROTO_ICMP {
            p.sport = port;
            p.dport = port;
        } else if src {
            p.sport = port;
        } else {
            p.dport = port;
        }
    }
    true
}

/// The half of an ICMP error's translation that belongs to the source
/// NAT hook (nat POSTROUTING, or INPUT), worked out with the other half
/// at the first hook and applied by `netctl_nat_src`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IcmpSrcHalf {
    /// 1 while there is one to apply.
    pub pending: u32,
    /// The quoted packet's new destination and port.
    pub quoted: [u8; 4],
    pub quoted_port: u16,
    _pad: u16,
    /// The error's new source.
    pub outer: [u8; 4],
}

/// An ICMP error about a translated connection, translated as the
/// kernel's nf_nat_icmp_reply_translation does: the quoted packet is
/// turned back into what its sender sent (or saw), and the error's own
/// addresses get the binding of the direction it travels. Checksums of the
/// quoted header and transport and of the ICMP message follow.
///
/// As in the kernel, each nat hook does its own half: this one, at the
/// first hook (PREROUTING, OUTPUT), the quoted source and the error's
/// destination; the quoted destination and the error's source wait for
/// `netctl_nat_src`, so that the hooks between see what the kernel's do.
/// Returns 1 if the packet changed, 0 if not, -1 if it must be dropped.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_icmp(skb: *mut __sk_buff) -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    let p = s.pkt;
    if p.proto != PROTO_ICMP || !p.has_inner || p.later_fragment {
        return 0;
    }
    let i = p.inner;
    let (isport, _) = quoted_ports(&p);
    // The connection tracking tied the error to.
    let orig = s.ct_key;
    let Some(e) = NETCTL_CT.get_ptr(orig) else {
        return 0;
    };
    // SAFETY: a live conntrack element; the binding never changes.
    let (nat, oa, op) = unsafe { ((*e).nat, (*e).orig_addr, (*e).orig_port) };
    if nat.flags == 0 {
        return 0;
    }
    // The originator and responder, before and after translation.
    let (ra, rp) = other_end(&orig, oa, op);
    let src = nat.flags & nat_bit::SRC != 0;
    let dst = nat.flags & nat_bit::DST != 0;
    let (ta, tp) = if src {
        (nat.snat_addr, nat.snat_port)
    } else {
        (oa, op)
    };
    let (da, dp) = if dst {
        (nat.dnat_addr, nat.dnat_port)
    } else {
        (ra, rp)
    };
    // Which direction the quoted packet went, by its source: the
    // originator's (as sent, or after SNAT) or the responder's. Which map
    // found the entry cannot say: a binding that leaves the tuple as it was
    // has no reply tuple of its own.
    let original = (i.saddr == oa && isport == op) || (src && i.saddr == ta && isport == tp);
    // Quoted: an original-direction packet (from wherever it was
    // translated) becomes the originator's; a reply becomes the
    // responder's.
    let ((qs, qsp), (qd, qdp), (outer_src, outer_dst)) = if original {
        (
            (oa, op),
            (ra, rp),
            (
                if dst { ra } else { p.saddr },
                if src { oa } else { p.daddr },
            ),
        )
    } else {
        (
            (da, dp),
            (ta, tp),
            (
                if src { ta } else { p.saddr },
                if dst { da } else { p.daddr },
            ),
        )
    };
    s.icmp_src_half = IcmpSrcHalf {
        pending: 1,
        quoted: qd,
        quoted_port: qdp,
        _pad: 0,
        outer: outer_src,
    };
    icmp_half(skb, s, false, (qs, qsp), outer_dst)
}

/// The source half of the ICMP error translation `netctl_nat_icmp` began
/// (see there). Returns 1 if the error's source changed, 0 if not, -1 if
/// it must be dropped.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_nat_icmp_src(skb: *mut __sk_buff) -> i32 {
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    let h = s.icmp_src_half;
    s.icmp_src_half.pending = 0;
    let before = s.pkt.saddr;
    let rc = icmp_half(skb, s, true, (h.quoted, h.quoted_port), h.outer);
    if rc < 0 {
        return rc;
    }
    i32::from(s.pkt.saddr != before)
}

/// The quoted "ports" of an ICMP error: TCP's and UDP's, or an ICMP
/// query's identifier (both ends).
#[inline(always)]
fn quoted_ports(p: &Pkt) -> (u16, u16) {
    match p.inner.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => (p.inner.sport, p.inner.dport),
        _ => (0, 0),
    }
}

/// One half of an ICMP error's translation: the quoted packet's source
/// and the error's destination (`src` false), or the quoted destination
/// and the error's source, to `quoted` and `outer`. Returns 1 if the
/// packet changed, 0 if not, -1 if it must be dropped.
#[inline(always)]
fn icmp_half(
    skb: *mut __sk_buff,
    s: &mut classify::Scratch,
    src: bool,
    quoted: ([u8; 4], u16),
    outer: [u8; 4],
) -> i32 {
    let p = s.pkt;
    let i = p.inner;
    let (isport, idport) = quoted_ports(&p);
    let (old, old_port) = if src {
        (i.daddr, idport)
    } else {
        (i.saddr, isport)
    };
    let outer_old = if src { p.saddr } else { p.daddr };
    if (old, old_port) == quoted && outer_old == outer {
        return 0;
    }
    let ctx = TcContext::new(skb);
    let Ok(ver_ihl) = ctx.load::<u8>(ETH_HLEN) else {
        return -1;
    };
    let icmp = ETH_HLEN + usize::from(ver_ihl & 0x0f) * 4;
    let iip = icmp + 8;
    let Ok(iv) = ctx.load::<u8>(iip) else {
        return -1;
    };
    let il4 = iip + usize::from(iv & 0x0f) * 4;
    let icsum = icmp + 2;
    // The quoted address: the quoted header's checksum, the quoted
    // transport checksum (TCP/UDP, when quoted and not zero) and the ICMP
    // checksum all follow.
    let tcsum = match i.proto {
        PROTO_TCP => il4 + 16,
        PROTO_UDP => il4 + 6,
        _ => 0,
    };
    let (addr_off, port_off) = if src {
        (iip + 16, il4 + 2)
    } else {
        (iip + 12, il4)
    };
    if !quoted_addr(&ctx, iip, addr_off, tcsum, icsum, old, quoted.0) {
        return -1;
    }
    if matches!(i.proto, PROTO_TCP | PROTO_UDP)
        && !quoted_port(&ctx, port_off, tcsum, icsum, old_port, quoted.1)
    {
        return -1;
    }
    // A quoted query's identifier stands for both ends; it goes with the
    // quoted source.
    if i.proto == PROTO_ICMP
        && !src
        && !quoted_port(&ctx, il4 + 4, il4 + 2, icsum, isport, quoted.1)
    {
        return -1;
    }
    // The error's own address (ICMP has no pseudo-header).
    let mut q = s.pkt;
    if !rewrite(&ctx, &mut q, src, outer, 0) {
        return -1;
    }
    if src {
        q.inner.daddr = quoted.0;
        q.inner.dport = quoted.1;
    } else {
        q.inner.saddr = quoted.0;
        q.inner.sport = quoted.1;
    }
    s.pkt = q;
    1
}

/// Rewrites a quoted address at `off` from `old` to `new`, keeping the
/// quoted IPv4 header's checksum (at `iip + 10`), the quoted transport
/// checksum (`tcsum`, 0: none) and the ICMP checksum (`icsum`) right.
#[inline(always)]
fn quoted_addr(
    ctx: &TcContext,
    iip: usize,
    off: usize,
    tcsum: usize,
    icsum: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> bool {
    if old == new {
        return true;
    }
    let (from, to) = (
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
    );
    if !patch_sum(ctx, iip + 10, icsum, from, to, 4) {
        return false;
    }
    // The transport checksum covers the addresses through its
    // pseudo-header; a zero UDP checksum (none) stays zero.
    if tcsum != 0
        && !patch_sum(
            ctx,
            tcsum,
            icsum,
            from,
            to,
            4 | u64::from(BPF_F_MARK_MANGLED_0),
        )
    {
        return false;
    }
    ctx.l4_csum_replace(icsum, from, to, 4).is_ok() && ctx.store(off, &new, 0).is_ok()
}

/// Rewrites a quoted port (or ICMP identifier) at `off`; `tcsum` is the
/// checksum covering it (0: none), `icsum` the ICMP checksum.
#[inline(always)]
fn quoted_port(
    ctx: &TcContext,
    off: usize,
    tcsum: usize,
    icsum: usize,
    old: u16,
    new: u16,
) -> bool {
    if old == new {
        return true;
    }
    let (from, to) = (
        u64::from(u16::from_ne_bytes(old.to_be_bytes())),
        u64::from(u16::from_ne_bytes(new.to_be_bytes())),
    );
    if tcsum != 0
        && !patch_sum(
            ctx,
            tcsum,
            icsum,
            from,
            to,
            2 | u64::from(BPF_F_MARK_MANGLED_0),
        )
    {
        return false;
    }
    ctx.l4_csum_replace(icsum, from, to, 2).is_ok() && ctx.store(off, &new.to_be_bytes(), 0).is_ok()
}

/// Updates the 16-bit checksum at `off` (inside the ICMP payload) for a
/// change `from` -> `to` of `flags & 0xf` bytes, and the ICMP checksum at
/// `icsum` for the checksum's own change. A checksum that is not in the
/// packet (a short quote) is left alone.
#[inline(always)]
fn patch_sum(ctx: &TcContext, off: usize, icsum: usize, from: u64, to: u64, flags: u64) -> bool {
    let Ok(before) = ctx.load::<[u8; 2]>(off) else {
        return true;
    };
    if flags & u64::from(BPF_F_MARK_MANGLED_0) != 0 && before == [0, 0] {
        return true;
    }
    let size = flags & !u64::from(BPF_F_MARK_MANGLED_0);
    // A plain 16-bit checksum fix, wherever the field is.
    if ctx.l3_csum_replace(off, from, to, size).is_err() {
        return false;
    }
    let Ok(after) = ctx.load::<[u8; 2]>(off) else {
        return false;
    };
    let (b, a) = (
        u64::from(u16::from_ne_bytes(before)),
        u64::from(u16::from_ne_bytes(after)),
    );
    ctx.l4_csum_replace(icsum, b, a, 2).is_ok()
}
