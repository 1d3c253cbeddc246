//! The rule compiler: turns a ruleset into the maps the eBPF classifier
//! reads (see "Netfilter rules, compiled" in `netctl-common`).
//!
//! The kernel walks chains with a jump stack and tests rules one by one; the
//! datapath cannot afford either. So each hook's tables are flattened into
//! one straight-line program of entries whose control flow only goes
//! forward (`flatten`), and the per-entry tests are replaced by per-field
//! classification and bitvector intersection (`classes`), so a packet costs
//! what it matches, not what the ruleset holds. `image` lays the result out as map
//! entries, and `simulate` runs those map entries exactly as the eBPF side
//! does, so tests can prove the maps against the reference interpreter
//! (`eval`).

mod classes;
mod flatten;
mod image;
mod simulate;

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use netctl_common::{
    MAP_RS_CLASS, MAP_RS_CLASS_MAX, MAP_RS_SUMMARY, MAP_RS_SUMMARY_MAX, MAP_RS_WORDS,
    MAP_RS_WORDS_MAX, RsNat, RuleEntry, entry, field, reject,
};

use crate::rules::model::{Hook, RejectWith, Ruleset};
use crate::{Error, Result};

pub use classes::{FieldClasses, LpmEntry, Words};
pub use image::MapImage;
pub use simulate::{Simulator, nat_of, packet_keys, simulate};

use flatten::{AtomTable, FlatKind, LogTable, NatTable};

/// Most entries one packet may go through at a hook before a verdict. The
/// datapath's walk loop is bounded by this; the compiler refuses rulesets
/// where a packet could need more.
pub const WALK_MAX: u32 = netctl_common::RS_WALK_MAX;

/// A compiled ruleset: each hook's program and field classifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// Indexed by `Hook::index()`.
    pub hooks: Vec<HookProgram>,
    /// LOG prefixes; `RuleEntry::log` of a LOG entry indexes this.
    pub logs: Vec<String>,
    /// NAT actions; `RuleEntry::log` of a NAT entry indexes this.
    pub nat: Vec<RsNat>,
}

/// One hook's flattened program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookProgram {
    pub hook: Hook,
    pub entries: Vec<RuleEntry>,
    /// The nat table's block `[nat_start, nat_end)`.
    pub nat_start: u32,
    pub nat_end: u32,
    /// The raw table's block is `[0, raw_end)`.
    pub raw_end: u32,
    /// Indexed by `field::*`; empty when the hook has no entries.
    pub fields: Vec<FieldClasses>,
    /// The most entries a packet can go through here (at most `WALK_MAX`).
    pub longest_walk: u32,
}

impl Compiled {
    /// Map contents for `generation` (0 or 1).
    pub fn image(&self, generation: u8) -> MapImage {
        image::build(self, generation)
    }
}

/// Compiles `rs` for a host whose interfaces are `ifaces` (name, ifindex):
/// interface matches are resolved to ifindexes here, so the program must be
/// recompiled when interfaces come and go (an interface unknown to it is
/// classified as a name no pattern but the bare `+` matches).
pub fn compile(rs: &Ruleset, ifaces: &[(String, u32)]) -> Result<Compiled> {
    check_ifaces(ifaces)?;
    let mut atoms = AtomTable::default();
    let mut logs = LogTable::default();
    let mut nats = NatTable::default();
    let mut hooks = Vec::with_capacity(Hook::ALL.len());
    for hook in Hook::ALL {
        let flat = flatten::flatten_hook(rs, hook, &mut atoms, &mut logs, &mut nats)?;
        let entries: Vec<RuleEntry> = flat
            .entries
            .iter()
            .map(|e| rule_entry(e.kind, e.slot, &flat.labels))
            .collect();
        let longest_walk = longest_walk(&entries);
        if longest_walk > WALK_MAX {
            return Err(Error::Invalid(format!(
                "hook {}: a packet could go through {longest_walk} rules before a verdict, \
                 and the datapath follows at most {WALK_MAX}; rules that let a packet go on \
                 (no target, LOG, jumps, ACCEPT and RETURN) are too many in a row",
                hook.chain_name()
            )));
        }
        let fields = if entries.is_empty() {
            Vec::new()
        } else {
            let occ = classes::occurrences(&flat.entries);
            (0..field::COUNT)
                .map(|f| classes::field_classes(f, entries.len(), &occ[f as usize], &atoms, ifaces))
                .collect()
        };
        hooks.push(HookProgram {
            hook,
            entries,
            nat_start: flat.nat_start,
            nat_end: flat.nat_end,
            raw_end: flat.raw_end,
            fields,
            longest_walk,
        });
    }
    let c = Compiled {
        hooks,
        logs: logs.prefixes,
        nat: nats.actions,
    };
    check_capacity(&c)?;
    Ok(c)
}

/// The maps hold both generations during a swap, so one generation may
/// use half of each.
fn check_capacity(c: &Compiled) -> Result<()> {
    let fields = || c.hooks.iter().flat_map(|h| h.fields.iter());
    let class: usize = fields().map(|f| f.lpm.len()).sum();
    let summary: usize = fields()
        .map(|f| f.classes().filter(|w| !w.is_empty()).count() + usize::from(!f.wild.is_empty()))
        .sum();
    let words: usize = fields().map(|f| f.words_len() + f.wild.len()).sum();
    for (what, n, max) in [
        (MAP_RS_CLASS, class, MAP_RS_CLASS_MAX),
        (MAP_RS_SUMMARY, summary, MAP_RS_SUMMARY_MAX),
        (MAP_RS_WORDS, words, MAP_RS_WORDS_MAX),
    ] {
        if n > max as usize / 2 {
            return Err(Error::Invalid(format!(
                "the ruleset needs {n} elements in map {what}, which holds {max} for both \
                 generations (the old one stays live while the new one is written); \
                 fewer distinct addresses, ports or interfaces per hook would help"
            )));
        }
    }
    Ok(())
}

fn check_ifaces(ifaces: &[(String, u32)]) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, ifindex) in ifaces {
        if *ifindex == 0 {
            return Err(Error::Invalid(format!(
                "interface {name}: ifindex 0 stands for \"no interface\""
            )));
        }
        if !seen.insert(*ifindex) {
            return Err(Error::Invalid(format!(
                "interface {name}: ifindex {ifindex} is given twice"
            )));
        }
    }
    Ok(())
}

fn rule_entry(kind: FlatKind, slot: u32, labels: &[u32]) -> RuleEntry {
    let mut e = RuleEntry {
        slot,
        ..RuleEntry::default()
    };
    match kind {
        FlatKind::Continue => e.kind = entry::CONTINUE,
        FlatKind::Log(i) => {
            e.kind = entry::LOG;
            e.log = i;
        }
        FlatKind::Skip(l) => {
            e.kind = entry::SKIP;
            e.target = labels[l as usize];
        }
        FlatKind::Drop => e.kind = entry::DROP,
        FlatKind::Reject(w) => {
            e.kind = entry::REJECT;
            e.reject = reject_code(w);
        }
        FlatKind::Nat(i, l) => {
            e.kind = entry::NAT;
            e.log = i;
            e.target = labels[l as usize];
        }
    }
    e
}

pub(crate) fn reject_code(w: RejectWith) -> u8 {
    match w {
        RejectWith::IcmpPortUnreachable => reject::ICMP_PORT_UNREACHABLE,
        RejectWith::IcmpNetUnreachable => reject::ICMP_NET_UNREACHABLE,
        RejectWith::IcmpHostUnreachable => reject::ICMP_HOST_UNREACHABLE,
        RejectWith::IcmpAdminProhibited => reject::ICMP_ADMIN_PROHIBITED,
        RejectWith::TcpReset => reject::TCP_RESET,
    }
}

pub(crate) fn reject_with(code: u8) -> Option<RejectWith> {
    Some(match code {
        reject::ICMP_PORT_UNREACHABLE => RejectWith::IcmpPortUnreachable,
        reject::ICMP_NET_UNREACHABLE => RejectWith::IcmpNetUnreachable,
        reject::ICMP_HOST_UNREACHABLE => RejectWith::IcmpHostUnreachable,
        reject::ICMP_ADMIN_PROHIBITED => RejectWith::IcmpAdminProhibited,
        reject::TCP_RESET => RejectWith::TcpReset,
        _ => return None,
    })
}

/// The most entries a packet can go through, whatever its fields: every
/// transfer goes forward, so the longest chain of entries that could match
/// one after the other is a longest path in a DAG, found from the back.
/// Predicates are ignored (a sufficient bound, not a tight one).
fn longest_walk(entries: &[RuleEntry]) -> u32 {
    // best_from[k]: the longest walk starting at any entry >= k.
    let mut best_from = vec![0u32; entries.len() + 1];
    for (i, e) in entries.iter().enumerate().rev() {
        let here = match e.kind {
            entry::DROP | entry::REJECT => 1,
            entry::SKIP | entry::NAT => 1 + best_from[(e.target as usize).min(entries.len())],
            _ => 1 + best_from[i + 1],
        };
        best_from[i] = best_from[i + 1].max(here);
    }
    best_from[0]
}

/// A hasher for the compiler's and simulator's own tables: SipHash would
/// dominate compiling 50,000 rules, and nothing here needs protection from
/// chosen collisions (rulesets come from the administrator).
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weakest and hashbrown picks
        // buckets with them: bring the strong high bits down (as rustc-hash).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.wrapping_add(n).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
