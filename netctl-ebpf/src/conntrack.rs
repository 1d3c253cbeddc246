//! Connection tracking for the `conntrack` match: one LRU entry per
//! connection, the TCP state from the flags (the kernel's transition table,
//! without window tracking, as with `nf_conntrack_tcp_be_liberal`), and
//! ICMP errors related to the connection they quote.
//!
//! As in the kernel, an existing entry is updated by every valid packet
//! (whatever the rules then decide), while a new one is only created once
//! the rules accepted its first packet (`confirm`).

use netctl_common::{
    CtCache, CtEntry, CtKey, CtNat, ct_flag, ct_timeout, ctbit, nat_bit, tcp_state as ts,
};

use crate::{
    maps::{NETCTL_CT, NETCTL_CT_NAT, NETCTL_CT_TIMEOUTS},
    packet::{
        PROTO_ICMP, PROTO_TCP, PROTO_UDP, Pkt, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
        TCP_URG, icmp_is_error,
    },
};

/// Table entries beyond the states: the packet is invalid / ignored.
const IV: u8 = ts::COUNT;
const IG: u8 = ts::COUNT + 1;
const SS: u8 = ts::SYN_SENT;
const SR: u8 = ts::SYN_RECV;
const ES: u8 = ts::ESTABLISHED;
const FW: u8 = ts::FIN_WAIT;
const CW: u8 = ts::CLOSE_WAIT;
const LA: u8 = ts::LAST_ACK;
const TW: u8 = ts::TIME_WAIT;
const CL: u8 = ts::CLOSE;
const S2: u8 = ts::SYN_SENT2;

/// The kernel's `tcp_conntracks[dir][flags][state]` (states in `tcp_state`
/// order: NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT,
/// LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2).
const TCP_ROWS: [[[u8; 10]; 5]; 2] = [
    [
        /* syn    */ [SS, SS, IG, IG, IG, IG, IG, SS, SS, S2],
        /* synack */ [IV, IV, SR, IV, IV, IV, IV, IV, IV, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [ES, IV, ES, ES, CW, CW, TW, TW, CL, IV],
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
    ],
    [
        /* syn    */ [IV, S2, IV, IV, IV, IV, IV, SS, IV, S2],
        /* synack */ [IV, SR, IG, IG, IG, IG, IG, IG, IG, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [IV, IG, SR, ES, CW, CW, TW, TW, CL, IG],
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
    ],
];

/// `TCP_ROWS` padded to powers of two (INVALID beyond), so that an index
/// masked into range is in bounds whatever code the compiler generates
/// for it: the verifier then needs no range it may not be able to follow.
static TCP_TABLE: [[[u8; 16]; 8]; 2] = {
    let mut t = [[[IV; 16]; 8]; 2];
    let mut d = 0;
    while d < 2 {
        let mut f = 0;
        while f < 5 {
            let mut s = 0;
            while s < 10 {
                t[d][f][s] = TCP_ROWS[d][f][s];
                s += 1;
            }
            f += 1;
        }
        d += 1;
    }
    t
};

/// The kernel's next state for a packet of direction `dir` with flags
/// `flag_index` in state `state` (IV, IG, or a `tcp_state`).
#[inline(always)]
fn tcp_next(dir: usize, flag_index: usize, state: u8) -> u8 {
    TCP_TABLE[dir & 1][flag_index & 7][usize::from(state & 15)]
}

/// The kernel's `get_conntrack_index`; `None` for "no flag", which is
/// invalid in every state.
#[inline(always)]
fn flag_index(flags: u8) -> Option<usize> {
    if flags & TCP_RST != 0 {
        Some(4)
    } else if flags & TCP_SYN != 0 {
        Some(if flags & TCP_ACK != 0 { 1 } else { 0 })
    } else if flags & TCP_FIN != 0 {
        Some(2)
    } else if flags & TCP_ACK != 0 {
        Some(3)
    } else {
        None
    }
}

/// The kernel's `tcp_valid_flags`, indexed by the flags without ECE, CWR
/// and PSH: everything else is INVALID before any state is looked at.
#[inline(always)]
fn tcp_flags_valid(flags: u8) -> bool {
    let f = flags & !(0xc0 | TCP_PSH);
    let (syn, ack, fin, rst, urg) = (TCP_SYN, TCP_ACK, TCP_FIN, TCP_RST, TCP_URG);
    f == syn
        || f == syn | urg
        || f == syn | ack
        || f == rst
        || f == rst | ack
        || f == fin | ack
        || f == fin | ack | urg
        || f == ack
        || f == ack | urg
}

/// What tracking found for a packet.
#[derive(Clone, Copy)]
pub struct Track {
    pub key: CtKey,
    /// One `ctbit::*`.
    pub ctstate: u8,
    /// 0: original direction, 1: reply.
    pub dir: usize,
    /// The packet would start a connection: its entry is created if the
    /// rules accept it.
    pub first: bool,
    /// TCP state the new entry starts in.
    pub new_state: u8,
    /// The live entry (`None` for new, invalid or related packets).
    pub entry: Option<*mut CtEntry>,
}

impl Track {
    #[inline(always)]
    fn invalid() -> Self {
        Track {
            key: CtKey::default(),
            ctstate: ctbit::INVALID,
            dir: 0,
            first: false,
            new_state: 0,
            entry: None,
        }
    }
}

/// The key in canonical order, and whether the packet goes from the
/// higher (address, port) pair to the lower one.
#[inline(always)]
pub fn key(proto: u8, saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> CtKey {
    let s = (u64::from(u32::from_be_bytes(saddr)) << 16) | u64::from(sport);
    let d = (u64::from(u32::from_be_bytes(daddr)) << 16) | u64::from(dport);
    if s <= d {
        CtKey {
            proto,
            clash: 0,
            _pad: [0; 2],
            a_addr: saddr,
            b_addr: daddr,
            a_port: sport,
            b_port: dport,
        }
    } else {
        CtKey {
            proto,
            clash: 0,
            _pad: [0; 2],
            a_addr: daddr,
            b_addr: saddr,
            a_port: dport,
            b_port: sport,
        }
    }
}

/// The entry's timeout: the topology's for its class, else the kernel's
/// default.
#[inline(always)]
fn timeout_ns(proto: u8, e: &CtEntry) -> u64 {
    let class = ct_timeout::class(proto, e.tcp_state, e.flags & ct_flag::SEEN_REPLY != 0);
    let set = NETCTL_CT_TIMEOUTS.get(class).copied().unwrap_or(0);
    let s = if set != 0 {
        set
    } else {
        ct_timeout::DEFAULTS[(class as usize).min(ct_timeout::DEFAULTS.len() - 1)]
    };
    u64::from(s) * 1_000_000_000
}

/// The translated connection whose reply tuple is `k`, and its entry:
/// `NETCTL_CT_NAT` says which, and only a live entry whose binding still
/// gives that reply tuple counts (the map keeps the reply tuples of
/// connections since timed out, or reopened with another binding).
#[inline(always)]
pub fn nat_owner(k: &CtKey, now: u64) -> Option<(CtKey, *mut CtEntry)> {
    // SAFETY: a copy is taken at once; an element evicted meanwhile by
    // another CPU yields a stale key, which the check below refuses.
    let o = NETCTL_CT_NAT.get_ptr(k).map(|p| unsafe { *p })?;
    let e = live(&o, now)?;
    // SAFETY: a live element (see `live`).
    if reply_key(&o, unsafe { &*e }) != *k {
        return None;
    }
    Some((o, e))
}

/// One end of a tuple: address and port (ICMP: query identifier).
pub type End = ([u8; 4], u16);

/// The key of the reply tuple of connection `o` (see `reply_ends`).
#[inline(always)]
pub fn reply_key(o: &CtKey, e: &CtEntry) -> CtKey {
    let ((rs, rsp), (rd, rdp)) = reply_ends(o, e);
    key(o.proto, rs, rsp, rd, rdp)
}

/// The source and destination of the reply tuple of connection `o`:
/// answers come from its DNAT target (else its destination) and go to its
/// SNAT source (else its source). An ICMP query's identifier stands for
/// both "ports".
#[inline(always)]
pub fn reply_ends(o: &CtKey, e: &CtEntry) -> (End, End) {
    let (src, sport) = (e.orig_addr, e.orig_port);
    let (dst, dport) = if o.a_addr == src && o.a_port == sport {
        (o.b_addr, o.b_port)
    } else {
        (o.a_addr, o.a_port)
    };
    let n = e.nat;
    let (rs, mut rsp) = if n.flags & nat_bit::DST != 0 {
        (n.dnat_addr, n.dnat_port)
    } else {
        (dst, dport)
    };
    let (rd, rdp) = reply_dst(e);
    if o.proto == PROTO_ICMP {
        rsp = rdp;
    }
    ((rs, rsp), (rd, rdp))
}

/// Where the reply tuple of entry `e`'s connection goes: its SNAT source,
/// else its originator.
#[inline(always)]
pub fn reply_dst(e: &CtEntry) -> End {
    if e.nat.flags & nat_bit::SRC != 0 {
        (e.nat.snat_addr, e.nat.snat_port)
    } else {
        (e.orig_addr, e.orig_port)
    }
}

/// Whether the live entry `e` is a connection conntrack knows (not one
/// standing for an unconfirmed one, see `ct_flag::UNCONFIRMED`).
#[inline(always)]
pub fn confirmed(e: *mut CtEntry) -> bool {
    // SAFETY: a live element (see `live`); a byte, read whole.
    unsafe { (*e).flags & ct_flag::UNCONFIRMED == 0 }
}

/// Whether the connection of live entry `e` was opened from `addr`/`port`.
#[inline(always)]
pub fn opened(e: *mut CtEntry, addr: [u8; 4], port: u16) -> bool {
    // SAFETY: a live element (see `live`); fields read whole.
    unsafe { (*e).orig_addr == addr && (*e).orig_port == port }
}

/// Whether a packet from `addr`/`port` under key `k` has one of the
/// tuples of the connection of live entry `e` (whose key is `k`): its
/// original, or its reply if that is the original turned around (nothing
/// translated it).
#[inline(always)]
fn has_tuple(k: &CtKey, e: *mut CtEntry, addr: [u8; 4], port: u16) -> bool {
    // SAFETY: as in `opened`.
    opened(e, addr, port) || unsafe { (*e).nat.flags == 0 || reply_key(k, &*e) == *k }
}

/// The live entry for `key`, unless it timed out.
#[inline(always)]
pub fn live(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    NETCTL_CT
        .get_ptr_mut(key)
        .filter(|e| fresh(key.proto, *e, now))
}

/// Whether the element `e` (of a connection of protocol `proto`) has not
/// timed out.
#[inline(always)]
fn fresh(proto: u8, e: *mut CtEntry, now: u64) -> bool {
    // SAFETY: a live LRU element, valid until the program returns; fields
    // another CPU updates concurrently are read whole (no tearing within a
    // u64) and at worst one packet is judged by a neighbour's timestamp.
    let last = unsafe { (*e).last_seen_ns };
    let t = unsafe { timeout_ns(proto, &*e) };
    now.saturating_sub(last) <= t
}

/// Looks the packet's connection up, works out its state and updates an
/// existing entry. Later fragments and ICMP errors quoting nothing known
/// are INVALID, as the kernel (which reassembles first) would call them
/// when it cannot tie them to a connection. `local`: the host sent the
/// packet.
#[inline(always)]
pub fn track(p: &Pkt, now: u64, local: bool) -> Track {
    if p.later_fragment || !p.l4 {
        return Track::invalid();
    }
    if p.proto == PROTO_ICMP && icmp_is_error(p.icmp_type) {
        return related(p, now, local);
    }
    if p.proto == PROTO_TCP && !tcp_flags_valid(p.tcp_flags) {
        return Track::invalid();
    }
    let (sport, dport) = match p.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => (p.sport, p.dport),
        _ => (0, 0),
    };
    let k = key(p.proto, p.saddr, sport, p.daddr, dport);
    let mut t = Track {
        key: k,
        ctstate: ctbit::NEW,
        dir: 0,
        first: true,
        new_state: ts::NONE,
        entry: None,
    };
    let tcp_index = if p.proto == PROTO_TCP {
        match flag_index(p.tcp_flags) {
            Some(i) => i,
            None => return Track::invalid(),
        }
    } else {
        0
    };

    // A translated connection's reply direction has a tuple of its own,
    // which leads to the entry's key. The entry under the packet's key is
    // its connection only if the packet has one of that connection's
    // tuples.
    let at_key = NETCTL_CT.get_ptr_mut(k);
    let holder = at_key.filter(|e| fresh(k.proto, *e, now) && confirmed(*e));
    let canonical = holder.filter(|e| has_tuple(&k, *e, p.saddr, sport));
    let (found, translated) = match canonical {
        Some(e) => (Some(e), false),
        None => match nat_owner(&k, now).filter(|(_, e)| confirmed(*e)) {
            Some((orig, e)) => {
                t.key = orig;
                (Some(e), true)
            }
            None if at_key.is_some() => {
                // The connection may be the one filed beside the holder
                // (`CtKey::clash`); a new one is, while the holder lives.
                let second = CtKey { clash: 1, ..k };
                match live(&second, now).filter(|e| confirmed(*e) && opened(*e, p.saddr, sport)) {
                    Some(e) => {
                        t.key = second;
                        (Some(e), false)
                    }
                    None => {
                        if holder.is_some() {
                            t.key = second;
                        }
                        (None, false)
                    }
                }
            }
            None => (None, false),
        },
    };
    if let Some(e) = found {
        // SAFETY: as in `live`.
        let (orig_addr, orig_port) = unsafe { ((*e).orig_addr, (*e).orig_port) };
        let dir = usize::from(translated || !(orig_addr == p.saddr && orig_port == sport));
        // SAFETY: as in `live`.
        let (old, flags) = unsafe { ((*e).tcp_state, (*e).flags) };
        let mut new = old;
        if p.proto == PROTO_TCP {
            new = tcp_next(dir, tcp_index, old);
            if new == IV {
                return Track::invalid();
            }
            // A SYN on a connection in TIME_WAIT or CLOSE opens a new one
            // over it (RFC 1122 reuse), as the kernel does.
            if dir == 0 && tcp_index == 0 && (old == TW || old == CL) {
                t.new_state = SS;
                return t;
            }
            if new == IG {
                new = old;
            }
        } else if p.proto == PROTO_ICMP && dir == 0 && !icmp_request(p.icmp_type) {
            return Track::invalid();
        }
        t.dir = dir;
        t.first = false;
        t.entry = Some(e);
        t.ctstate = if dir == 1 || flags & ct_flag::SEEN_REPLY != 0 {
            ctbit::ESTABLISHED
        } else {
            ctbit::NEW
        };
        // SAFETY: as in `live`. Racing updates from another CPU lose a count
        // or a refresh, or — the two directions of one connection handled
        // on two CPUs at once — a TCP transition (see docs/rules.md).
        // A reset answering a connection that never had a reply ends it at
        // once, as the kernel's `nf_ct_kill` does: this packet still
        // belongs to it (and is translated by it), the next one starts
        // anew. A clock of 0 makes the entry idle past any timeout.
        let killed = p.proto == PROTO_TCP
            && dir == 1
            && p.tcp_flags & TCP_RST != 0
            && flags & ct_flag::SEEN_REPLY == 0;
        unsafe {
            (*e).last_seen_ns = if killed { 0 } else { now };
            (*e).tcp_state = new;
            if dir == 1 {
                (*e).flags = flags | ct_flag::SEEN_REPLY;
            }
            (*e).packets[dir & 1] = (*e).packets[dir & 1].wrapping_add(1);
            (*e).bytes[dir & 1] = (*e).bytes[dir & 1].wrapping_add(u64::from(p.ip_len));
        }
        return t;
    }

    match p.proto {
        PROTO_TCP => {
            let new = tcp_next(0, tcp_index, ts::NONE);
            if new == IV || new == IG {
                return Track::invalid();
            }
            t.new_state = new;
        }
        // Only queries start ICMP connections; a lone reply is INVALID.
        PROTO_ICMP if !icmp_request(p.icmp_type) => return Track::invalid(),
        _ => {}
    }
    t
}

#[inline(always)]
fn icmp_request(t: u8) -> bool {
    matches!(t, 8 | 13 | 15 | 17)
}

/// An ICMP error is RELATED when it quotes a packet of a known connection,
/// or, sent by the host (`local`), one it dropped unconfirmed. As the
/// kernel does, the quoted tuple is looked up turned around: the error
/// must travel as a packet with one of the connection's tuples would (a
/// translated connection's original tuple quoted as it is, for one, is
/// not). The key of the connection goes to the answer.
#[inline(always)]
fn related(p: &Pkt, now: u64, local: bool) -> Track {
    if !p.has_inner {
        return Track::invalid();
    }
    let i = p.inner;
    let (sport, dport) = match i.proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP => (i.sport, i.dport),
        _ => (0, 0),
    };
    let k = key(i.proto, i.saddr, sport, i.daddr, dport);
    let usable = |e: *mut CtEntry| local || confirmed(e);
    // The error's direction starts where the quoted packet was going.
    let from = (i.daddr, dport);
    let owner = match live(&k, now).filter(|e| usable(*e) && has_tuple(&k, *e, from.0, from.1)) {
        Some(_) => Some(k),
        None => nat_owner(&k, now)
            // SAFETY: a live element (see `live`).
            .filter(|(o, e)| usable(*e) && reply_ends(o, unsafe { &**e }).0 == from)
            .map(|(o, _)| o),
    };
    let Some(owner) = owner else {
        return Track::invalid();
    };
    let mut t = Track::invalid();
    t.ctstate = ctbit::RELATED;
    t.key = owner;
    t
}

/// Creates the entry of a connection whose first packet the rules
/// accepted; `cache` is what that packet's classification was, `flags`
/// its `ct_flag`s (UNCONFIRMED or none). The entry is built in `entry`
/// (scratch map memory: it is too big for the stack).
#[inline(always)]
pub fn confirm(
    key: &CtKey,
    tcp_state: u8,
    p: &Pkt,
    now: u64,
    (cache, flags): (&CtCache, u8),
    entry: &mut CtEntry,
) {
    *entry = CtEntry {
        orig_addr: p.saddr,
        orig_port: match p.proto {
            PROTO_TCP | PROTO_UDP | PROTO_ICMP => p.sport,
            _ => 0,
        },
        tcp_state,
        flags,
        created_ns: now,
        last_seen_ns: now,
        packets: [1, 0],
        bytes: [u64::from(p.ip_len), 0],
        cache: [*cache, CtCache::default()],
        nat: CtNat::default(),
    };
    // A connection reopening its tuple (a SYN on TIME_WAIT, a client port
    // used again) is rewritten in place: a new element would take a node
    // from the LRU's free lists and give the old one back, under their
    // locks, for every connection. Another CPU may read it half written
    // for a packet of the connection it replaces, which is over.
    if let Some(e) = NETCTL_CT.get_ptr_mut(key) {
        // SAFETY: a live element and scratch memory, both `CtEntry`.
        unsafe { crate::maps::copy_words(e, entry) };
        return;
    }
    // A full table evicts the least recently used entry (LRU); a failure
    // only means the next packet is NEW again.
    let _ = NETCTL_CT.insert(key, entry, 0);
}
