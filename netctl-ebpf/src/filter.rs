//! The rules, applied to a packet that entered from a container: conntrack,
//! then PREROUTING and INPUT or FORWARD and POSTROUTING, as the kernel would
//! walk them for the route the fast path chose. A connection direction's
//! outcome is cached in its conntrack entry, so only packets whose
//! connection, state, route or ruleset changed are classified.
//!
//! Each stage is a global function of its own: the verifier checks each
//! once, so the branches of parsing, tracking and caching add up instead of
//! multiplying (checked inline, they cost ~0.4 s of verification per load).
//! Stages talk through the per-CPU scratch map.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netctl_common::{CtCache, CtNat, config, ct_flag, ctbit, field, hook, verdict};

use crate::{
    classify::{self, CACHE_SLOTS, netctl_classify, netctl_raw},
    conntrack, maps,
    maps::{NETCTL_CT, NETCTL_RS_HOOKS},
    packet::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    path,
};

/// `netctl_lookup_cache`'s answer when there is no usable cache.
const MISS: u32 = u32::MAX;

/// `netctl_filter`'s answer when the nat table gave a connection's first
/// packet a new destination at PREROUTING: the packet is rewritten, its
/// route must be decided again, and `netctl_filter_rest` judges the rest.
pub const REROUTE: u32 = 0xfe;

/// `netctl_filter`'s answer when the first hook accepted the packet and
/// `netctl_filter_rest` must judge the rest (called by the program, not by
/// `netctl_filter`: every frame of a call chain counts against one
/// 512-byte stack).
pub const MORE: u32 = 0xfd;

/// What comes before the route decision, for the packet in `skb` that
/// arrived on a port of bridge `in_if` (0: sent by the host, towards
/// `out_if`): the raw table, conntrack, and the destination half of the
/// connection's NAT binding. Returns ACCEPT, or the raw table's verdict.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_prepare(skb: *mut __sk_buff, in_if: u32, output: u32, out_if: u32) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    if !begin(skb) {
        return accept;
    }
    let generation = maps::config(config::RULES_SERIAL) & 1;
    let first_hook = u32::from(if output != 0 {
        hook::OUTPUT
    } else {
        hook::PREROUTING
    });
    let Some(h) = NETCTL_RS_HOOKS.get(generation * u32::from(hook::COUNT) + first_hook) else {
        return accept;
    };
    let v = raw(
        generation,
        first_hook,
        h.raw_end,
        in_if,
        (output != 0).then_some(out_if),
    );
    if v != accept {
        return v;
    }
    let t = netctl_track(output);
    let nat = if t & 0xff == u32::from(ctbit::RELATED) {
        crate::nat::netctl_nat_icmp(skb)
    } else {
        crate::nat::netctl_nat_dst(skb)
    };
    if nat < 0 {
        return u32::from(verdict::DROP);
    }
    accept
}

/// Runs the rules for the packet `netctl_prepare` readied, which takes
/// `route` (a `path::*`) out of `out_if`: a cached outcome, or PREROUTING
/// (OUTPUT for the host's packets). Returns a `verdict::*` (REJECT with
/// its `reject::*` in bits 8..16), `MORE` or `REROUTE`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_filter(skb: *mut __sk_buff, in_if: u32, route: u32, out_if: u32) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    let Some(s) = classify::scratch() else {
        return accept;
    };
    // SAFETY: this CPU's scratch element.
    let (parsed, t) = unsafe { ((*s).parsed, (*s).track) };
    if parsed == 0 {
        return accept;
    }
    // One word says both which generation is live and how new it is, so a
    // packet can never pair one generation with the other's serial.
    let serial = maps::config(config::RULES_SERIAL);
    let generation = serial & 1;
    let stamp = serial.wrapping_add(1).max(1);
    let path = route & 0xff;
    let output = path == u32::from(path::OUTPUT);
    let out_if = if path == u32::from(path::FORWARD) || output {
        out_if
    } else {
        0
    };
    let first_hook = u32::from(if output {
        hook::OUTPUT
    } else {
        hook::PREROUTING
    });
    let ctstate = t & 0xff;
    let first = (t >> 16) & 1;
    set_route(in_if, out_if, path, stamp);
    let v = netctl_lookup_cache(t);
    if v != MISS {
        return v;
    }
    let Some(h) = NETCTL_RS_HOOKS.get(generation * u32::from(hook::COUNT) + first_hook) else {
        return accept;
    };
    let raw_end = h.raw_end;

    // What is cached is what comes after raw (raw runs for every packet).
    // The kernel's mangle and nat see the packet as it arrived: a live
    // binding's destination half (`netctl_prepare`) is its nat hook's
    // doing. So does the rest of PREROUTING (nothing follows nat there);
    // filter OUTPUT, after nat OUTPUT, sees it translated.
    netctl_load_fields(in_if, ctstate, 1);
    if output {
        set(field::OUT, out_if);
    }
    let split = if output && (first != 0 || translated()) {
        h.nat_end.max(raw_end)
    } else {
        u32::MAX
    };
    let mut v = netctl_classify(generation, first_hook, first, raw_end, split);
    if v == accept && split != u32::MAX {
        // nat OUTPUT's choice for a connection's first packet takes
        // effect here, before filter OUTPUT; the program sends the packet
        // along its new route (`l3::netctl_reroute`). REDIRECT is to lo's
        // address, as the kernel's for the host's packets.
        // SAFETY: this CPU's scratch element; the walk recorded it.
        if first != 0
            && unsafe { (*s).nat[0] } != 0
            && crate::nat::netctl_nat_new_dst(skb, LOOPBACK) < 0
        {
            return u32::from(verdict::DROP);
        }
        // (Routed again by its new destination, but filter OUTPUT still
        // names the first route's device: the hook's `state->out`.)
        reload_header();
        v = netctl_classify(generation, first_hook, first, split, u32::MAX);
    }
    if v != accept {
        netctl_store_cache(t, v);
        return v;
    }
    // SAFETY: as above; the walk may have recorded a NAT action.
    if !output && first != 0 && unsafe { (*s).nat[0] } != 0 {
        if crate::nat::netctl_nat_new_dst(skb, in_if) < 0 {
            return u32::from(verdict::DROP);
        }
        return REROUTE;
    }
    MORE
}

/// The hooks after the first (INPUT, or FORWARD and POSTROUTING; after
/// OUTPUT, POSTROUTING) for a packet taking `route` out of `out_if`;
/// `rerouted` after a destination NAT changed the packet since its fields
/// were read. Records the outcome in the connection's cache.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_filter_rest(in_if: u32, route: u32, out_if: u32, rerouted: u32) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    let Some(s) = classify::scratch() else {
        return accept;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    let t = s.track;
    let first = (t >> 16) & 1;
    let serial = maps::config(config::RULES_SERIAL);
    let generation = serial & 1;
    let path = route & 0xff;
    if rerouted != 0 {
        let out = if path == u32::from(path::FORWARD) {
            out_if
        } else {
            0
        };
        s.in_if = in_if;
        s.out_if = out;
        s.path = path;
    }
    // The first hook saw the packet as it arrived; these see it after the
    // destination half of its NAT.
    reload_header();
    let all = u32::MAX;
    let mut v = accept;
    if path == u32::from(path::INPUT) {
        v = netctl_classify(generation, u32::from(hook::INPUT), first, 0, all);
    } else if path == u32::from(path::FORWARD) {
        set(field::OUT, out_if);
        v = netctl_classify(generation, u32::from(hook::FORWARD), first, 0, all);
        if v == accept {
            set(field::IN, 0);
            v = netctl_classify(generation, u32::from(hook::POSTROUTING), first, 0, all);
        }
    } else if path == u32::from(path::OUTPUT) {
        // `out_if`: the route nat OUTPUT's translation chose, if any.
        set(field::OUT, out_if);
        v = netctl_classify(generation, u32::from(hook::POSTROUTING), first, 0, all);
    }
    netctl_store_cache(t, v);
    v
}

/// `netctl_filter_answer`'s flags: the answer is a TCP reset; the answer
/// goes to the host itself (the refused packet was the host's own).
pub const ANSWER_TCP: u32 = 1;
pub const ANSWER_LOCAL: u32 = 2;

/// The hooks the answer a REJECT has just written into `skb` crosses, as
/// the kernel sends it as its own packet out of `out_if`: OUTPUT and
/// POSTROUTING, and for an answer to the host's own packet (`ANSWER_LOCAL`,
/// routed over loopback) PREROUTING and INPUT in from `lo` as well.
///
/// The kernel attaches the refused packet's connection to the answer, so
/// every table, raw included, sees it as RELATED; a refused packet without
/// a connection (INVALID) gives an answer that is INVALID too. nat sees
/// only a TCP reset's POSTROUTING (`ANSWER_TCP`): that connection's
/// destination mapping was settled before the refusal, its source mapping
/// not yet, and an ICMP error is translated through its connection instead.
/// Returns a `verdict::*`; anything but ACCEPT means the answer is dropped.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_filter_answer(skb: *mut __sk_buff, out_if: u32, flags: u32) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    let Some(s) = classify::scratch() else {
        return accept;
    };
    // SAFETY: this CPU's scratch element, still holding the refused
    // packet's tracking. (Not its CTSTATE field value: a refusal replayed
    // from the connection's cache leaves there what the raw table was
    // shown, INVALID.)
    let refused = unsafe { (*s).track } as u8;
    let tracked = refused & ctbit::INVALID == 0;
    let ctstate = u32::from(if tracked {
        ctbit::RELATED
    } else {
        ctbit::INVALID
    });
    let nat = u32::from(tracked && flags & ANSWER_TCP != 0);
    if netctl_parse(skb) == 0 {
        return accept;
    }
    let generation = maps::config(config::RULES_SERIAL) & 1;
    let all = u32::MAX;
    netctl_load_fields(0, ctstate, 0);
    set(field::OUT, out_if);
    let output = u32::from(hook::OUTPUT);
    let mut v = answer_first_hook(generation, output);
    if v == accept {
        v = netctl_classify(generation, u32::from(hook::POSTROUTING), nat, 0, all);
    }
    if v == accept && flags & ANSWER_LOCAL != 0 {
        netctl_load_fields(LOOPBACK, ctstate, 0);
        v = answer_first_hook(generation, u32::from(hook::PREROUTING));
        if v == accept {
            v = netctl_classify(generation, u32::from(hook::INPUT), 0, 0, all);
        }
    }
    v
}

/// The ifindex of `lo` in every namespace.
pub const LOOPBACK: u32 = 1;

/// A hook that begins with the raw table (OUTPUT or PREROUTING), for an
/// answer: raw, then the rest without nat.
#[inline(always)]
fn answer_first_hook(generation: u32, hk: u32) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    let Some(h) = NETCTL_RS_HOOKS.get(generation * u32::from(hook::COUNT) + hk) else {
        return accept;
    };
    let raw_end = h.raw_end;
    if raw_end > 0 {
        let v = netctl_raw(generation, hk, raw_end);
        if v != accept {
            return v;
        }
    }
    netctl_classify(generation, hk, 0, raw_end, u32::MAX)
}

/// Starts judging the packet in `skb`: reads its fields into the scratch
/// map and keeps them as it arrived. False (and the scratch map marked
/// unparsed, so no later stage uses another packet's fields) if it is not
/// IPv4.
#[inline(always)]
pub fn begin(skb: *mut __sk_buff) -> bool {
    let Some(s) = classify::scratch() else {
        return false;
    };
    // SAFETY: this CPU's scratch element. A packet refused before
    // conntrack saw it (in raw) is INVALID.
    unsafe {
        (*s).parsed = 0;
        (*s).track = u32::from(ctbit::INVALID);
        (*s).now = 0;
        (*s).icmp_src_half.pending = 0;
    }
    if netctl_parse(skb) == 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        (*s).parsed = 1;
        (*s).orig_pkt = (*s).pkt;
    }
    true
}

/// Reads the packet's fields into the scratch map; 0 if it is not IPv4.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_parse(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element; nothing else uses it while this
    // program runs on this CPU (programs do not preempt each other there).
    u32::from(packet::parse(&ctx, unsafe { &mut (*s).pkt }))
}

/// Tracks the packet's connection (`local`: one the host sent). Returns
/// its conntrack state in bits 0..8, the direction in bit 8, "starts a
/// connection" in bit 16 and "has a live entry" in bit 24; the key and new
/// TCP state go to the scratch map.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_track(local: u32) -> u32 {
    let Some(s) = classify::scratch() else {
        return u32::from(netctl_common::ctbit::INVALID);
    };
    let now = crate::clock::now();
    // SAFETY: as in `netctl_parse`.
    let s = unsafe { &mut *s };
    s.now = now;
    let t = conntrack::track(&s.pkt, now, local != 0);
    s.ct_key = t.key;
    s.ct_state = t.new_state;
    s.nat = [0, 0];
    s.binding = CtNat::default();
    if let Some(e) = t.entry {
        // SAFETY: a live conntrack element (see `conntrack::live`); both
        // sides are plain data of the sizes `maps::copy_words` is given.
        unsafe {
            maps::copy_words(&mut s.live_nat, &(*e).nat);
            s.live_orig_addr = (*e).orig_addr;
            s.live_orig_port = (*e).orig_port;
            maps::copy_words(&mut s.live_cache, &(*e).cache[t.dir & 1]);
        }
    }
    s.track = u32::from(t.ctstate)
        | ((t.dir as u32 & 1) << 8)
        | (u32::from(t.first) << 16)
        | (u32::from(t.entry.is_some()) << 24);
    s.track
}

/// Replays the cached outcome of the packet's connection direction, if it
/// still holds: bumps its counters and returns its verdict, else `MISS`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_lookup_cache(t: u32) -> u32 {
    if (t >> 24) & 1 == 0 {
        return MISS;
    }
    let Some(s) = classify::scratch() else {
        return MISS;
    };
    // SAFETY: as in `netctl_parse`.
    let len = unsafe { (*s).pkt.ip_len };
    // SAFETY: as above.
    let (in_if, out_if, path, stamp) = unsafe { ((*s).in_if, (*s).out_if, (*s).path, (*s).stamp) };
    // SAFETY: as above; `track` copied the direction's cache from the live
    // entry. A cache another CPU was rewriting can be copied torn; at
    // worst one packet's counters are off.
    let c = unsafe { &(*s).live_cache };
    if c.serial != stamp
        || u32::from(c.ctstate) != t & 0xff
        || c.in_if != in_if
        || c.out_if != out_if
        || u32::from(c.path) != path
    {
        return MISS;
    }
    let n = usize::from(c.nslots);
    let mut i = 0;
    while i < CACHE_SLOTS {
        if i < n {
            maps::count_rule(c.slots[i], len);
        }
        i += 1;
    }
    u32::from(c.verdict) | (u32::from(c.reject) << 8)
}

/// Fills the scratch map with the packet's field values for the
/// classifier: as it arrived (`as_arrived`, before any NAT `begin` saw it
/// undergo) or as it now is. PREROUTING sees no output interface.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_load_fields(in_if: u32, ctstate: u32, as_arrived: u32) -> i32 {
    let Some(s) = classify::scratch() else {
        return -1;
    };
    // SAFETY: as in `netctl_parse`.
    let s = unsafe { &mut *s };
    let p = if as_arrived != 0 { &s.orig_pkt } else { &s.pkt };
    header_values(&mut s.values, p);
    let icmp = if p.proto == PROTO_ICMP && p.l4 {
        [p.icmp_type, p.icmp_code]
    } else {
        [0, 0]
    };
    s.values[field::PROTO as usize] = [p.proto, 0, 0, 0];
    s.values[field::ICMP as usize] = [icmp[0], icmp[1], 0, 0];
    s.values[field::IN as usize] = in_if.to_be_bytes();
    s.values[field::OUT as usize] = [0; 4];
    s.values[field::CTSTATE as usize] = [ctstate as u8, 0, 0, 0];
    s.len = p.ip_len;
    s.nslots = 0;
    s.uncacheable = 0;
    0
}

/// Addresses and ports of `p` as field values (NAT changes nothing else).
#[inline(always)]
fn header_values(values: &mut [[u8; 4]; field::COUNT as usize], p: &packet::Pkt) {
    let (sport, dport) = match p.proto {
        PROTO_TCP | PROTO_UDP if p.l4 => (p.sport, p.dport),
        _ => (0, 0),
    };
    let sp = sport.to_be_bytes();
    let dp = dport.to_be_bytes();
    values[field::SRC as usize] = p.saddr;
    values[field::DST as usize] = p.daddr;
    values[field::SPORT as usize] = [sp[0], sp[1], 0, 0];
    values[field::DPORT as usize] = [dp[0], dp[1], 0, 0];
}

/// Sets the address and port fields to the packet as it now is, keeping
/// the rest (and the counters bumped so far).
#[inline(always)]
fn reload_header() {
    if let Some(s) = classify::scratch() {
        // SAFETY: this CPU's scratch element.
        let s = unsafe { &mut *s };
        header_values(&mut s.values, &s.pkt);
    }
}

/// Whether NAT has changed the packet's addresses or ports since `begin`.
#[inline(always)]
fn translated() -> bool {
    classify::scratch().is_some_and(|s| {
        // SAFETY: this CPU's scratch element.
        let (p, o) = unsafe { (&(*s).pkt, &(*s).orig_pkt) };
        p.saddr != o.saddr || p.daddr != o.daddr || p.sport != o.sport || p.dport != o.dport
    })
}

/// Records the outcome `v` in the connection's entry, or creates the entry
/// if this packet starts an accepted connection.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_store_cache(t: u32, v: u32) -> i32 {
    let Some(s) = classify::scratch() else {
        return -1;
    };
    // SAFETY: as in `netctl_parse`.
    let s = unsafe { &mut *s };
    s.cache = CtCache {
        serial: if s.uncacheable != 0 { 0 } else { s.stamp },
        in_if: s.in_if,
        out_if: s.out_if,
        ctstate: t as u8,
        verdict: v as u8,
        reject: (v >> 8) as u8,
        nslots: s.nslots as u8,
        path: s.path as u8,
        _pad: [0; 3],
        slots: s.slots,
    };
    if (t >> 24) & 1 != 0 {
        let key = s.ct_key;
        if let Some(e) = NETCTL_CT.get_ptr_mut(key) {
            // SAFETY: a live conntrack element; the cache is replaced whole.
            unsafe { (*e).cache[((t >> 8) & 1) as usize] = s.cache };
        }
    } else if (t >> 16) & 1 != 0
        && v == u32::from(verdict::ACCEPT)
        && s.nat == [0, 0]
        && s.ct_key.clash == 0
    {
        // (A connection the nat table translates, or whose tuple clashes,
        // is confirmed with its binding, by `nat::netctl_nat_src`.)
        // The first packet's walk included the nat table, which later
        // packets skip: its outcome is not theirs, so nothing is cached yet.
        s.cache.serial = 0;
        let now = crate::clock::now();
        // A packet the kernel drops after PREROUTING never reaches
        // conntrack's confirmation (see `ct_flag::UNCONFIRMED`).
        let flags = if s.path == u32::from(path::PRE) {
            ct_flag::UNCONFIRMED
        } else {
            0
        };
        conntrack::confirm(
            &s.ct_key,
            s.ct_state,
            &s.pkt,
            now,
            (&s.cache, flags),
            &mut s.entry,
        );
    }
    0
}

/// Whether the packet `netctl_prepare` readied (and a first packet's
/// PREROUTING DNAT, after `REROUTE`) now has another destination address.
#[inline(always)]
pub fn dst_moved() -> bool {
    classify::scratch().is_some_and(|s| {
        // SAFETY: this CPU's scratch element, written for this packet when
        // `parsed` is set (the caller ran `netctl_prepare` for it).
        unsafe { (*s).parsed != 0 && (*s).pkt.daddr != (*s).orig_pkt.daddr }
    })
}

/// The destination address of the packet `netctl_prepare` readied, as it
/// now is.
#[inline(always)]
pub fn dst() -> [u8; 4] {
    // SAFETY: this CPU's scratch element.
    classify::scratch().map_or([0; 4], |s| unsafe { (*s).pkt.daddr })
}

/// The clock reading conntrack took for the packet `netctl_prepare`
/// readied, if it got that far.
#[inline(always)]
pub fn packet_time() -> Option<u64> {
    let s = classify::scratch()?;
    // SAFETY: this CPU's scratch element; `begin` cleared the time for
    // this packet, so a non-zero one is this packet's.
    let now = unsafe { (*s).now };
    (now != 0).then_some(now)
}

/// Records the route the packet takes, which its cache is keyed by.
#[inline(always)]
fn set_route(in_if: u32, out_if: u32, path: u32, stamp: u32) {
    if let Some(s) = classify::scratch() {
        // SAFETY: this CPU's scratch element.
        unsafe {
            (*s).in_if = in_if;
            (*s).out_if = out_if;
            (*s).path = path;
            (*s).stamp = stamp;
        }
    }
}

/// Sets an interface field between hooks.
#[inline(always)]
pub fn set(f: u8, ifindex: u32) {
    if let Some(s) = classify::scratch() {
        // SAFETY: this CPU's scratch element.
        unsafe { (*s).values[usize::from(f)] = ifindex.to_be_bytes() };
    }
}

/// raw at hook `hk` (its block `[0, raw_end)`): before conntrack, which
/// never sees what raw drops, so the conntrack match says INVALID there,
/// as in the kernel. `out_if`: the `-o` device, at output hooks.
#[inline(always)]
pub fn raw(generation: u32, hk: u32, raw_end: u32, in_if: u32, out_if: Option<u32>) -> u32 {
    if raw_end == 0 {
        return u32::from(verdict::ACCEPT);
    }
    netctl_load_fields(in_if, u32::from(ctbit::INVALID), 1);
    if let Some(o) = out_if {
        set(field::OUT, o);
    }
    netctl_raw(generation, hk, raw_end)
}
