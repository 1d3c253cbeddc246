//! The rule classifier: per-field lookups whose bitvectors are intersected,
//! then a walk over the matching entries only (see `netctl_common`,
//! "Netfilter rules, compiled"). Its cost depends on the number of fields
//! and of entries a packet actually matches, not on the number of rules.
//!
//! The pieces are global functions, which the verifier checks once each,
//! with unknown scalar arguments, rather than once per call site and loop
//! iteration. Every argument of a global function must be used: LLVM drops
//! unused ones from the call, and the verifier, which goes by the BTF
//! signature, then refuses the program. Global functions take only scalars
//! and the context, so the
//! packet's field values, their classes and the candidate blocks live in a
//! per-CPU scratch map.

use aya_ebpf::{
    cty::c_void,
    helpers::bpf_loop,
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use netctl_common::{
    RS_CLASS_WILD, RS_ENTRIES_MAX, RS_NO_SLOT, RS_SUMMARY_WORDS, RsWordKey, entry, field, hook,
    verdict,
};

use crate::flows;
use crate::maps::{
    self, NETCTL_RS_CLASS, NETCTL_RS_ENTRIES, NETCTL_RS_HOOKS, NETCTL_RS_SUMMARY, NETCTL_RS_WORDS,
};

/// Most steps one hook's walk takes: one per candidate block (at most
/// `RS_BLOCKS_MAX`) plus one per matching non-final entry, which the
/// compiler keeps within `RS_WALK_MAX`.
pub const MAX_STEPS: u32 = netctl_common::RS_BLOCKS_MAX + netctl_common::RS_WALK_MAX;
/// Counters a cached classification can replay.
pub const CACHE_SLOTS: usize = netctl_common::CT_CACHE_SLOTS;

const FIELDS: usize = field::COUNT as usize;

pub struct Scratch {
    /// Each field's key, big-endian, left-aligned.
    pub values: [[u8; 4]; FIELDS],
    pub classes: [u32; FIELDS],
    /// Candidate blocks of the hook being walked.
    pub sum: [u64; RS_SUMMARY_WORDS],
    /// IPv4 total length: the byte count rules add.
    pub len: u32,
    /// Counters bumped so far for this packet (to cache), and whether the
    /// outcome can be cached at all (no LOG, not too many counters).
    pub nslots: u32,
    pub slots: [u32; CACHE_SLOTS],
    pub uncacheable: u32,
    /// The packet's fields, tracking result and the answer REJECT builds:
    /// here rather than on the stack, which all frames of a call chain
    /// share (512 bytes).
    pub pkt: crate::packet::Pkt,
    /// The connection's key and TCP state, for `conntrack::confirm`.
    pub ct_key: netctl_common::CtKey,
    pub ct_state: u8,
    pub entry: netctl_common::CtEntry,
    pub cache: netctl_common::CtCache,
    /// What the cache is keyed by besides the connection (see `CtCache`).
    pub in_if: u32,
    pub out_if: u32,
    pub path: u32,
    pub stamp: u32,
    pub buf: [u8; 64],
    pub quote: [u8; 28],
    pub walk: Walk,
    /// The NAT actions the nat table chose for a connection's first
    /// packet, as `MAP_RS_NAT` index + 1 (0: none): `[destination
    /// (PREROUTING, OUTPUT), source (POSTROUTING, INPUT)]`.
    pub nat: [u32; 2],
    /// `track`'s answer for the packet (see `filter::netctl_track`).
    pub track: u32,
    /// Whether `netctl_prepare` found an IPv4 packet to judge.
    pub parsed: u32,
    /// The packet's clock reading (by `track`; 0: none yet).
    pub now: u64,
    /// The packet as it arrived, before any NAT (what a new entry records).
    pub orig_pkt: crate::packet::Pkt,
    /// The binding a first packet's NAT is building.
    pub binding: netctl_common::CtNat,
    /// A tuple NAT would translate to, for `nat::netctl_nat_taken`: its
    /// key, and its source (the key has no direction; the kernel's tuples
    /// do).
    pub candidate: netctl_common::CtKey,
    pub candidate_src: [u8; 4],
    pub candidate_sport: u16,
    /// The live entry's binding and originator, copied by `track`: the
    /// NAT stages need them for every packet of a translated connection,
    /// and the binding never changes once the entry exists.
    pub live_nat: netctl_common::CtNat,
    pub live_orig_addr: [u8; 4],
    pub live_orig_port: u16,
    /// The live entry's cache for the packet's direction, copied by
    /// `track` too (saves `netctl_lookup_cache` a lookup).
    pub live_cache: netctl_common::CtCache,
    /// A one-block walk's per-field words: the entries each field's value
    /// allows, and the entries that constrain the field at all (see
    /// `flows`).
    pub blk_match: [u64; FIELDS],
    pub blk_cons: [u64; FIELDS],
    /// An ICMP error's translation still to do at the source NAT hook.
    pub icmp_src_half: crate::nat::IcmpSrcHalf,
    /// The flow cache's key and outcome being looked up or stored.
    pub flow_key: flows::FlowKey,
    pub flow_out: flows::FlowOutcome,
}

#[map]
pub static NETCTL_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    NETCTL_SCRATCH.get_ptr_mut(0)
}

/// Looks up each field's class for `hook` of generation `generation`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_classes(generation: u32, hk: u32) -> i32 {
    let Some(s) = scratch() else { return -1 };
    let mut f = 0usize;
    while f < FIELDS {
        // SAFETY: this CPU's scratch element; nothing else runs on this CPU
        // with it while the program does (softirq context, no preemption of
        // the program by another run on the same CPU that uses it).
        let v = unsafe { (*s).values[f] };
        let width = u32::from(field::WIDTH[f]);
        let data = [
            generation as u8,
            hk as u8,
            f as u8,
            0,
            v[0],
            v[1],
            v[2],
            v[3],
        ];
        let class = NETCTL_RS_CLASS
            .get(Key::new(32 + width, data))
            .copied()
            .unwrap_or(RS_CLASS_WILD - 1);
        // SAFETY: as above.
        unsafe { (*s).classes[f] = class };
        f += 1;
    }
    0
}

/// ANDs the per-field summaries into the candidate blocks.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_summary(generation: u32, hk: u32) -> i32 {
    let Some(s) = scratch() else { return -1 };
    let mut w = 0usize;
    while w < RS_SUMMARY_WORDS {
        // SAFETY: this CPU's scratch element (see `netctl_rs_classes`).
        unsafe { (*s).sum[w] = u64::MAX };
        w += 1;
    }
    let mut f = 0usize;
    while f < FIELDS {
        // SAFETY: as above.
        let class = unsafe { (*s).classes[f] };
        let mut k = word_key(generation, hk, f, class, u32::MAX);
        let own = NETCTL_RS_SUMMARY.get_ptr(k);
        k.class = RS_CLASS_WILD;
        let wild = NETCTL_RS_SUMMARY.get_ptr(k);
        let mut w = 0usize;
        while w < RS_SUMMARY_WORDS {
            // SAFETY: live hash elements (valid until the program returns)
            // and this CPU's scratch element.
            unsafe {
                let a = own.map(|p| (*p).words[w]).unwrap_or(0);
                let b = wild.map(|p| (*p).words[w]).unwrap_or(0);
                (*s).sum[w] &= a | b;
            }
            w += 1;
        }
        f += 1;
    }
    0
}

/// The key of a summary (`block` is `u32::MAX`) or of a word.
#[inline(always)]
fn word_key(generation: u32, hk: u32, f: usize, class: u32, block: u32) -> RsWordKey {
    RsWordKey {
        generation: generation as u8,
        hook: hk as u8,
        field: f as u8,
        _pad: 0,
        class,
        block,
    }
}

/// The entries of `block` that every field's class allows.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_block(generation: u32, hk: u32, block: u32) -> u64 {
    let Some(s) = scratch() else { return 0 };
    let mut bits = u64::MAX;
    let mut f = 0usize;
    while f < FIELDS {
        // SAFETY: this CPU's scratch element.
        let class = unsafe { (*s).classes[f] };
        let mut k = word_key(generation, hk, f, class, block);
        // SAFETY: copies of live hash elements (valid until the program
        // returns); userspace never rewrites words of the live generation.
        let own = unsafe { NETCTL_RS_WORDS.get(k).copied().unwrap_or(0) };
        k.class = RS_CLASS_WILD;
        // SAFETY: as above.
        let wild = unsafe { NETCTL_RS_WORDS.get(k).copied().unwrap_or(0) };
        bits &= own | wild;
        if bits == 0 {
            return 0;
        }
        f += 1;
    }
    bits
}

/// The first candidate block holding entry `from` or a later one, or
/// `u32::MAX`. The summary has one bit per block of 64 entries.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_next_block(from: u32) -> u32 {
    let Some(s) = scratch() else { return u32::MAX };
    let first_block = from / 64;
    let start = first_block / 64;
    // A fixed trip count from 0, so the verifier sees every index bounded.
    let mut w = 0usize;
    while w < RS_SUMMARY_WORDS {
        if (w as u32) >= start {
            // SAFETY: this CPU's scratch element.
            let mut word = unsafe { (*s).sum[w] };
            if w as u32 == start {
                word &= u64::MAX << (first_block % 64);
            }
            if word != 0 {
                return (w as u32) * 64 + lowest_bit(word);
            }
        }
        w += 1;
    }
    u32::MAX
}

/// Index of the lowest set bit of a non-zero word (eBPF has no ctz): a
/// binary search over halves, quarters… of the isolated bit.
#[inline(always)]
pub fn lowest_bit(x: u64) -> u32 {
    let mut x = x & x.wrapping_neg();
    let mut n = 0;
    for width in [32u32, 16, 8, 4, 2, 1] {
        let mask = (1u64 << width) - 1;
        if x & mask == 0 {
            n += width;
            x >>= width;
        }
    }
    n
}

/// The walk over one hook's matching entries, stepped by `bpf_loop`.
#[repr(C)]
pub struct Walk {
    pub generation: u32,
    pub hk: u32,
    pub first: u32,
    pub start: u32,
    pub entries: u32,
    pub nat_start: u32,
    pub nat_end: u32,
    base: u32,
    cursor: u32,
    block: u32,
    result: u32,
    stop: u32,
    /// The program fits in block 0, whose matching entries are
    /// `block_bits` (no summary, no block reads while walking).
    pub single: u32,
    bits: u64,
    block_bits: u64,
    /// One-block walks: the entries passed over as not matching, and those
    /// matched and acted on (what `flows` caches by).
    pub nonmatch: u64,
    pub matched: u64,
    /// The packet's NAT choice and counter count before this walk.
    pub nat_before: u32,
    pub slots_from: u32,
}

/// Runs entries `[start, end)` of one hook's program (`end` is clamped to
/// its length) for the packet in the scratch map: returns a `verdict::*`
/// (REJECT with its `reject::*` in bits 8..16). `first` says whether the
/// packet starts a connection (only then is nat walked).
///
/// Holds nothing across its calls: it lies on the deepest call chain (a
/// walk's step logging), whose frames share one 512-byte stack.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_classify(
    generation: u32,
    hk: u32,
    first: u32,
    start: u32,
    end: u32,
) -> u32 {
    let v = netctl_rs_begin(generation, hk, first, start, end);
    if v != flows::MISS {
        return v;
    }
    flows::netctl_flow_store(netctl_rs_walk())
}

/// Sets up the walk `netctl_classify` asked for, or settles it at once:
/// returns its verdict (an empty range, a cached flow), else `flows::MISS`
/// with the walk ready in the scratch map.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_begin(
    generation: u32,
    hk: u32,
    first: u32,
    start: u32,
    end: u32,
) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    let idx = generation.min(1) * u32::from(hook::COUNT) + hk.min(u32::from(hook::COUNT) - 1);
    let Some(h) = NETCTL_RS_HOOKS.get(idx) else {
        return accept;
    };
    let entries = h.entries.min(RS_ENTRIES_MAX).min(end);
    if start >= entries {
        return accept;
    }
    // A program of one block: its outcome may be cached by the fields it
    // consulted, and its words are read once, without a summary.
    let single = h.entries <= 64;
    if single {
        let v = flows::netctl_flow_lookup(generation, hk, first, start, entries);
        if v != flows::MISS {
            return v;
        }
    }
    netctl_rs_classes(generation, hk);
    let block_bits = if single {
        netctl_rs_block0(generation, hk)
    } else {
        netctl_rs_summary(generation, hk);
        0
    };
    let Some(s) = scratch() else {
        return accept;
    };
    // SAFETY: this CPU's scratch element.
    unsafe {
        let w = &mut (*s).walk;
        w.generation = generation;
        w.hk = hk;
        w.first = first;
        w.start = start;
        w.entries = entries;
        w.nat_start = h.nat_start;
        w.nat_end = h.nat_end;
        w.base = idx * RS_ENTRIES_MAX;
        w.cursor = start;
        w.block = if single { 0 } else { u32::MAX };
        w.result = accept;
        w.stop = 0;
        w.single = u32::from(single);
        w.bits = 0;
        w.block_bits = block_bits;
        w.nonmatch = 0;
        w.matched = 0;
        w.nat_before = (*s).nat[flows::nat_side(hk)];
        w.slots_from = (*s).nslots;
    }
    flows::MISS
}

/// Marks `netctl_rs_walk`'s verdict when the walk was cut off at its bound
/// rather than finished (never cached).
pub const WALK_CUT: u32 = 1 << 31;

/// Block 0's words of every field for a one-block program: keeps them for
/// `flows`, and returns the entries all fields allow.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_block0(generation: u32, hk: u32) -> u64 {
    let Some(s) = scratch() else { return 0 };
    let mut bits = u64::MAX;
    let mut f = 0usize;
    while f < FIELDS {
        // SAFETY: this CPU's scratch element.
        let class = unsafe { (*s).classes[f] };
        let mut k = word_key(generation, hk, f, class, 0);
        // SAFETY: copies of live hash elements (see `netctl_rs_block`).
        let own = unsafe { NETCTL_RS_WORDS.get(k).copied().unwrap_or(0) };
        k.class = RS_CLASS_WILD;
        // SAFETY: as above.
        let wild = unsafe { NETCTL_RS_WORDS.get(k).copied().unwrap_or(0) };
        // SAFETY: this CPU's scratch element.
        unsafe {
            (*s).blk_match[f] = own | wild;
            (*s).blk_cons[f] = !wild;
        }
        bits &= own | wild;
        f += 1;
    }
    bits
}

/// Steps the walk set up in the scratch map to its verdict. A global
/// function of its own, with an empty frame: the verifier checks a
/// `bpf_loop` callback over and over until the state it can see stops
/// changing, and that state includes the calling frame.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_walk() -> u32 {
    // A loop the verifier checks once (its body is the callback), where an
    // unrolled walk of this length would exceed its instruction budget.
    // SAFETY: `step` has the callback signature the helper expects and
    // ignores its context argument.
    let n = unsafe { bpf_loop(MAX_STEPS, step as *mut c_void, core::ptr::null_mut(), 0) };
    if n >= i64::from(MAX_STEPS) {
        // The compiler bounds the walk below MAX_STEPS; should a packet
        // still get here, it is dropped rather than let through unjudged.
        return u32::from(verdict::DROP) | WALK_CUT;
    }
    let Some(s) = scratch() else {
        return u32::from(verdict::DROP);
    };
    // SAFETY: this CPU's scratch element.
    unsafe { (*s).walk.result }
}

extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    // The verifier wants exactly 0 or 1 from a callback. A global
    // function's result is an unknown scalar to it, and the compiler, which
    // can see that result is 0 or 1, drops any normalisation; so the stop
    // flag is read back from map memory, which neither can see into.
    netctl_rs_step();
    let Some(s) = scratch() else { return 1 };
    // SAFETY: this CPU's scratch element.
    if unsafe { (*s).walk.stop } != 0 { 1 } else { 0 }
}

/// One step of the walk: the next matching entry at or after the cursor.
/// Returns 1 (stop) once the walk has a verdict.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_step() -> i32 {
    let Some(s) = scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element.
    let w = unsafe { &mut (*s).walk };
    let accept = u32::from(verdict::ACCEPT);
    if w.cursor >= w.entries {
        w.result = accept;
        w.stop = 1;
        return 1;
    }
    let i = if w.single != 0 {
        let i = netctl_rs_next_single();
        if i >= w.entries {
            w.result = accept;
            w.stop = 1;
            return 1;
        }
        i
    } else {
        if w.cursor / 64 != w.block || w.bits == 0 {
            let b = netctl_rs_next_block(w.cursor);
            if b == u32::MAX || b.saturating_mul(64) >= w.entries {
                w.result = accept;
                w.stop = 1;
                return 1;
            }
            w.block = b;
            w.bits = netctl_rs_block(w.generation, w.hk, b);
            if b * 64 < w.cursor {
                w.bits &= u64::MAX << (w.cursor % 64);
            }
            if w.bits == 0 {
                w.cursor = (b + 1) * 64;
                return 0;
            }
        }
        let i = w.block * 64 + lowest_bit(w.bits);
        w.bits &= w.bits - 1;
        if i >= w.entries {
            w.result = accept;
            w.stop = 1;
            return 1;
        }
        i
    };
    if w.first == 0 && i >= w.nat_start && i < w.nat_end {
        w.cursor = w.nat_end;
        w.bits = 0;
        return 0;
    }
    let Some(e) = NETCTL_RS_ENTRIES.get(w.base + i) else {
        w.result = accept;
        w.stop = 1;
        return 1;
    };
    let (kind, target, slot, reject, log) = (e.kind, e.target, e.slot, e.reject, e.log);
    w.matched |= 1u64 << (i & 63);
    if slot != RS_NO_SLOT {
        count(slot);
    }
    match kind {
        entry::CONTINUE => w.cursor = i + 1,
        entry::LOG => {
            crate::trace::netctl_log(w.generation, log, w.hk);
            if let Some(s) = scratch() {
                // SAFETY: this CPU's scratch element.
                unsafe { (*s).uncacheable = 1 };
            }
            w.cursor = i + 1;
        }
        entry::SKIP => w.cursor = target,
        entry::DROP => {
            w.result = u32::from(verdict::DROP);
            w.stop = 1;
            return 1;
        }
        entry::REJECT => {
            w.result = u32::from(verdict::REJECT) | (u32::from(reject) << 8);
            w.stop = 1;
            return 1;
        }
        // A NAT target ends its table's walk; which manipulation it is
        // follows from the hook, as in the kernel (source at POSTROUTING
        // and INPUT).
        entry::NAT => {
            if let Some(s) = scratch() {
                // SAFETY: this CPU's scratch element.
                unsafe { (*s).nat[flows::nat_side(w.hk)] = log.saturating_add(1) };
            }
            w.cursor = target;
        }
        _ => {
            w.result = accept;
            w.stop = 1;
            return 1;
        }
    }
    // A jump backwards or out of the block re-reads from the new cursor.
    if w.cursor / 64 != w.block || w.cursor <= i {
        w.bits = 0;
    } else {
        w.bits &= u64::MAX << (w.cursor % 64);
    }
    0
}

/// The next matching entry at or after the cursor of a one-block walk
/// (`entries` if none), noting the entries before it as passed over (see
/// `flows`). A function of its own, so that its frame is not part of
/// `netctl_rs_step`'s, which lies on the deepest call chain.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_rs_next_single() -> u32 {
    let Some(s) = scratch() else {
        return u32::MAX;
    };
    // SAFETY: this CPU's scratch element.
    let w = unsafe { &mut (*s).walk };
    let bits = w.block_bits & !flows::range(0, w.cursor);
    let i = if bits == 0 {
        w.entries
    } else {
        lowest_bit(bits).min(w.entries)
    };
    w.nonmatch |= flows::range(w.cursor, i);
    i
}

/// Runs the raw table's block `[0, raw_end)` of `hk`, before conntrack.
/// A block that is only its ACCEPT policy (the usual case) costs one entry
/// read instead of a classification.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_raw(generation: u32, hk: u32, raw_end: u32) -> u32 {
    let accept = u32::from(verdict::ACCEPT);
    if raw_end == 1 {
        let idx = generation.min(1) * u32::from(hook::COUNT) + hk.min(u32::from(hook::COUNT) - 1);
        let Some(e) = NETCTL_RS_ENTRIES.get(idx * RS_ENTRIES_MAX) else {
            return accept;
        };
        let (kind, slot) = (e.kind, e.slot);
        if slot != RS_NO_SLOT
            && let Some(s) = scratch()
        {
            // SAFETY: this CPU's scratch element.
            maps::count_rule(slot, unsafe { (*s).len });
        }
        return if kind == entry::DROP {
            u32::from(verdict::DROP)
        } else {
            accept
        };
    }
    netctl_classify(generation, hk, 0, 0, raw_end)
}

/// Bumps a rule counter and remembers it for the connection's cache.
#[inline(always)]
pub fn count(slot: u32) {
    let Some(s) = scratch() else { return };
    // SAFETY: this CPU's scratch element.
    unsafe {
        maps::count_rule(slot, (*s).len);
        let n = (*s).nslots as usize;
        if n < CACHE_SLOTS {
            (*s).slots[n] = slot;
            (*s).nslots += 1;
        } else {
            (*s).uncacheable = 1;
        }
    }
}
