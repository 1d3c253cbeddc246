//! The classifier's flow cache: the outcome of one hook's walk, keyed by
//! the values of only the fields that walk consulted, so that it serves
//! every packet agreeing with them (OVS calls this a megaflow). A new
//! connection's packets are then judged without a classification as soon
//! as an earlier connection with the same consulted values was: the
//! masquerading client's next source port, a published port's next
//! connection from the same client.
//!
//! Only hooks whose program fits in one block of 64 entries are cached:
//! there the walk sees every entry's per-field match bits, which is what
//! finding the consulted fields takes. Larger programs already skip most
//! entries by their summary, and keep the per-connection cache alone.
//!
//! Which fields a walk consulted: all fields an entry it acted on
//! constrains, and for every entry it passed over as not matching, one
//! field that refutes it (the first in `REFUTE_ORDER` that does). Any
//! packet with the same values in those fields matches and misses the very
//! same entries, so its walk is the same, counters and NAT choice included.
//! Entries the walk jumped over are not consulted, nor is the nat table's
//! block for a packet that does not start a connection.

use aya_ebpf::{macros::map, maps::Array, maps::LruHashMap};
use netctl_common::{config, field, flow_stat};

use crate::{classify, maps};

const FIELDS: usize = field::COUNT as usize;

/// The order refuting fields are picked in: first the fields that stay the
/// same across a host's connections (interfaces, protocol, state), last
/// the ports, which differ per connection; a walk refuted by the former
/// then caches for all connections.
const REFUTE_ORDER: [u8; FIELDS] = [
    field::IN,
    field::OUT,
    field::PROTO,
    field::CTSTATE,
    field::DST,
    field::SRC,
    field::ICMP,
    field::DPORT,
    field::SPORT,
];

/// Flow entries, shared by all CPUs. 8192 outcomes of 112 bytes: far more
/// distinct (hook, consulted values) than the rules of a container host
/// produce, and an evicted one is only classified again.
const FLOWS_MAX: u32 = 8192;

/// Masks remembered per (generation, hook, first packet or not).
const MASKS: usize = 4;
/// `FlowMasks::masks` bit of a slot in use (mask 0 is a valid mask: a walk
/// that consulted nothing).
const PRESENT: u32 = 1 << 31;

/// The most counters an outcome replays (as many as a connection's cache).
pub const SLOTS: usize = netctl_common::CT_CACHE_SLOTS;

/// What a walk is keyed by: the rules (serial), where it ran, and the
/// consulted fields' values (the others zero).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FlowKey {
    serial: u32,
    hook: u8,
    first: u8,
    mask: u16,
    start: u16,
    end: u16,
    values: [[u8; 4]; FIELDS],
}

/// A walk's outcome: its verdict, the NAT action it chose (0: none) and
/// the counters it bumped, in order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FlowOutcome {
    verdict: u32,
    nat: u32,
    nslots: u32,
    slots: [u32; SLOTS],
}

/// The masks walks of one (generation, hook, first) have consulted, for
/// the rules of `serial`; stale (and empty) once the rules change.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowMasks {
    serial: u32,
    next: u32,
    masks: [u32; MASKS],
}

#[map]
static NETCTL_FLOWS: LruHashMap<FlowKey, FlowOutcome> = LruHashMap::with_max_entries(FLOWS_MAX, 0);

#[map]
static NETCTL_FLOW_MASKS: Array<FlowMasks> =
    Array::with_max_entries(2 * netctl_common::hook::COUNT as u32 * 2, 0);

/// `lookup`'s answer when no cached outcome applies.
pub const MISS: u32 = u32::MAX;

/// The walk `classify::netctl_classify` is about to do, as far as a flow
/// key needs it: `generation` and the serial it was read from must agree,
/// or the rules are being swapped and nothing is cached.
#[inline(always)]
fn key(generation: u32, hk: u32, first: u32, start: u32, end: u32) -> Option<FlowKey> {
    let serial = maps::config(config::RULES_SERIAL);
    if serial & 1 != generation & 1 {
        return None;
    }
    Some(FlowKey {
        serial,
        hook: hk as u8,
        first: first as u8,
        mask: 0,
        start: start as u16,
        end: end as u16,
        values: [[0; 4]; FIELDS],
    })
}

#[inline(always)]
fn masks_index(generation: u32, hk: u32, first: u32) -> u32 {
    ((generation & 1) * u32::from(netctl_common::hook::COUNT) + hk) * 2 + (first & 1)
}

/// Fills `k` with the scratch map's field values under `mask`. Without a
/// branch on `mask`: the verifier would otherwise follow every mask a walk
/// can consult as a path of its own.
#[inline(always)]
fn fill(k: &mut FlowKey, s: *const classify::Scratch, mask: u32) {
    k.mask = mask as u16;
    let mut f = 0usize;
    while f < FIELDS {
        let keep = ((mask >> f) & 1).wrapping_neg();
        // SAFETY: this CPU's scratch element (see `classify::scratch`).
        let v = u32::from_ne_bytes(unsafe { (*s).values[f] });
        k.values[f] = (v & keep).to_ne_bytes();
        f += 1;
    }
}

/// Replays the cached outcome of the walk `classify::netctl_classify`
/// would do now, if one applies: bumps its counters (remembering them for
/// the connection's cache), records its NAT choice, and returns its
/// verdict; else `MISS`.
#[inline(never)]
#[unsafe(no_mangle)]
// The key is borrowed, not moved: moved, it would be copied onto the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub extern "C" fn netctl_flow_lookup(
    generation: u32,
    hk: u32,
    first: u32,
    start: u32,
    end: u32,
) -> u32 {
    let Some(k) = key(generation, hk, first, start, end) else {
        return MISS;
    };
    let Some(s) = classify::scratch() else {
        return MISS;
    };
    let Some(m) = NETCTL_FLOW_MASKS.get(masks_index(generation, hk, first)) else {
        return MISS;
    };
    if m.serial != k.serial {
        maps::count_flow(flow_stat::MISS);
        return MISS;
    }
    let masks = m.masks;
    // SAFETY: this CPU's scratch element; the key is built there rather
    // than on the stack, which all frames of a call chain share.
    let fk = unsafe { &mut (*s).flow_key };
    *fk = k;
    let mut j = 0usize;
    while j < MASKS {
        let mask = masks[j];
        if mask & PRESENT != 0 {
            fill(fk, s, mask);
            if let Some(o) = NETCTL_FLOWS.get_ptr(&*fk) {
                replay(s, hk, o);
                maps::count_flow(flow_stat::HIT);
                // SAFETY: a live element, valid until the program returns;
                // outcomes are written whole and never changed in place.
                return unsafe { (*o).verdict };
            }
        }
        j += 1;
    }
    maps::count_flow(flow_stat::MISS);
    MISS
}

#[inline(always)]
fn replay(s: *mut classify::Scratch, hk: u32, o: *const FlowOutcome) {
    // SAFETY: a live flow element (see the caller).
    let (n, nat) = unsafe { ((*o).nslots as usize, (*o).nat) };
    let mut i = 0usize;
    while i < SLOTS {
        if i < n {
            // SAFETY: as above.
            classify::count(unsafe { (*o).slots[i] });
        }
        i += 1;
    }
    if nat != 0 {
        // SAFETY: this CPU's scratch element.
        unsafe { (*s).nat[nat_side(hk)] = nat };
    }
}

/// Which half of `Scratch::nat` a hook's NAT target fills (see the NAT
/// entry in `classify::netctl_rs_step`).
#[inline(always)]
pub fn nat_side(hk: u32) -> usize {
    use netctl_common::hook;
    usize::from(hk == u32::from(hook::POSTROUTING) || hk == u32::from(hook::INPUT))
}

/// Caches the outcome of the walk just done (see `classify::Walk`), if it
/// is of one block: `verdict` (the walk's result), the NAT action it
/// recorded and the counters it bumped. Nothing is cached for a walk cut
/// off at its bound, one that logged, or one whose counters overflowed the
/// scratch map's list. Returns the verdict.
#[inline(never)]
#[unsafe(no_mangle)]
// Key and outcome are borrowed from the scratch map, not copied onto the
// stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub extern "C" fn netctl_flow_store(walked: u32) -> u32 {
    let verdict = walked & !classify::WALK_CUT;
    let Some(s) = classify::scratch() else {
        return verdict;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    if s.walk.single == 0 || walked & classify::WALK_CUT != 0 || s.uncacheable != 0 {
        return verdict;
    }
    let w = &s.walk;
    let (generation, hk, first) = (w.generation, w.hk, w.first);
    let Some(mut k) = key(generation, hk, first, w.start, w.entries) else {
        return verdict;
    };
    let mask = consulted(s);
    let serial = k.serial;
    let nat = s.nat[nat_side(hk)];
    let nat = if nat != s.walk.nat_before { nat } else { 0 };
    let from = s.walk.slots_from as usize;
    let upto = s.nslots as usize;
    s.flow_out.verdict = verdict;
    s.flow_out.nat = nat;
    s.flow_out.nslots = 0;
    let mut i = 0usize;
    while i < SLOTS {
        let j = from + i;
        s.flow_out.slots[i] = 0;
        if j < upto && j < SLOTS {
            s.flow_out.slots[i] = s.slots[j];
            s.flow_out.nslots += 1;
        }
        i += 1;
    }
    // In the scratch map, off the shared stack (see `netctl_flow_lookup`).
    fill(&mut k, s, mask);
    s.flow_key = k;
    if NETCTL_FLOWS.insert(&s.flow_key, &s.flow_out, 0).is_ok() {
        maps::count_flow(flow_stat::STORED);
    }
    remember(generation, hk, first, serial, mask | PRESENT);
    verdict
}

/// The fields the walk in the scratch map consulted, as a bit per field.
#[inline(always)]
fn consulted(s: &classify::Scratch) -> u32 {
    let w = &s.walk;
    let mut refuted = w.nonmatch;
    if w.first == 0 {
        refuted &= !range(w.nat_start, w.nat_end);
    }
    let mut mask = 0u32;
    let mut j = 0usize;
    while j < FIELDS {
        let f = usize::from(REFUTE_ORDER[j]);
        let m = s.blk_match.get(f).copied().unwrap_or(u64::MAX);
        if refuted & !m != 0 {
            mask |= 1 << f;
            refuted &= m;
        }
        j += 1;
    }
    let mut f = 0usize;
    while f < FIELDS {
        if w.matched & s.blk_cons[f] != 0 {
            mask |= 1 << f;
        }
        f += 1;
    }
    mask
}

/// Adds `mask` to the masks tried for (generation, hook, first), starting
/// the list afresh when the rules changed. Two CPUs may race here; at
/// worst a mask is lost and its walks are classified again.
#[inline(always)]
fn remember(generation: u32, hk: u32, first: u32, serial: u32, mask: u32) {
    let Some(m) = NETCTL_FLOW_MASKS.get_ptr_mut(masks_index(generation, hk, first)) else {
        return;
    };
    // SAFETY: a live array element, valid until the program returns.
    let m = unsafe { &mut *m };
    if m.serial != serial {
        *m = FlowMasks {
            serial,
            next: 0,
            masks: [0; MASKS],
        };
    }
    let mut j = 0usize;
    while j < MASKS {
        if m.masks[j] == mask {
            return;
        }
        j += 1;
    }
    let at = (m.next as usize) & (MASKS - 1);
    m.masks[at] = mask;
    m.next = m.next.wrapping_add(1);
}

/// Bits `[lo, hi)` of a block's word (both clamped to 64).
#[inline(always)]
pub fn range(lo: u32, hi: u32) -> u64 {
    below(hi) & !below(lo)
}

/// Bits `[0, n)`.
#[inline(always)]
fn below(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}
