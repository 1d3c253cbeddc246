//! Per-field equivalence classes: the datapath classifies a packet one field
//! at a time with an LPM lookup, so for each field the key space is cut at
//! every atom's prefixes, and each piece gets the bitvector of the entries
//! whose predicate on that field holds there. Pieces with equal bitvectors
//! share a class, and entries that do not look at the field are kept once,
//! in the WILD class, rather than in every class.
//!
//! The pieces are the nodes of the trie of all atom prefixes: a key belongs
//! to the deepest prefix containing it, and is inside exactly the atoms with
//! a prefix on the path to that node. A depth-first walk keeps, per entry,
//! how many of its atoms on the field hold, updating only the entries of the
//! atoms a node adds, so the work is proportional to the atoms' uses and the
//! output, not to entries × classes.

use std::hash::Hasher;

use netctl_common::field;

use super::{FastHasher, FastMap};

use super::flatten::{AtomTable, FlatEntry};

/// A sparse bitvector over entries: (block, word) for each non-zero
/// 64-entry block, in block order.
pub type Words = Vec<(u32, u64)>;

/// One LPM entry of a field's classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmEntry {
    /// The key, left-aligned in 32 bits.
    pub value: u32,
    /// Prefix length in the field's bits (0 is the default class).
    pub len: u8,
    pub class: u32,
}

/// One field's classifier at one hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldClasses {
    /// Always has the /0 entry first.
    pub lpm: Vec<LpmEntry>,
    /// Entries that do not constrain the field.
    pub wild: Words,
    /// The words of every class, one class after the other: with 50,000
    /// classes, one allocation each would be most of the compile time.
    words: Words,
    /// Class `c` is `words[starts[c]..starts[c + 1]]`.
    starts: Vec<u32>,
}

impl FieldClasses {
    pub fn class_count(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// The entries holding in class `c`, as sparse words.
    pub fn class(&self, c: u32) -> &[(u32, u64)] {
        let c = c as usize;
        &self.words[self.starts[c] as usize..self.starts[c + 1] as usize]
    }

    /// Non-zero words over all classes.
    pub fn words_len(&self) -> usize {
        self.words.len()
    }

    pub fn classes(&self) -> impl Iterator<Item = &[(u32, u64)]> {
        self.starts
            .windows(2)
            .map(|w| &self.words[w[0] as usize..w[1] as usize])
    }
}

/// A piece of the key space: a prefix and the atoms that contain it but
/// not its parent.
struct Node {
    value: u32,
    len: u8,
    atoms: std::ops::Range<usize>,
}

fn contains(outer: (u32, u8), inner: (u32, u8)) -> bool {
    outer.1 <= inner.1 && (outer.1 == 0 || (outer.0 ^ inner.0) >> (32 - u32::from(outer.1)) == 0)
}

/// Each field's atom occurrences at a hook, (entry, atom, negated), in
/// entry order: one pass over the predicates instead of one per field.
pub(super) fn occurrences(entries: &[FlatEntry]) -> Vec<Vec<(u32, u32, bool)>> {
    let mut out = vec![Vec::new(); field::COUNT as usize];
    for (e, entry) in entries.iter().enumerate() {
        for a in &entry.pred {
            out[a.field as usize].push((e as u32, a.id, a.neg));
        }
    }
    out
}

/// Builds the classes of `fld` over a hook's `n` entries, given the atom
/// occurrences of the field. `ifaces` are the known interfaces (name,
/// ifindex) for the interface fields.
pub(super) fn field_classes(
    fld: u8,
    n: usize,
    occurrences: &[(u32, u32, bool)],
    atoms: &AtomTable,
    ifaces: &[(String, u32)],
) -> FieldClasses {
    let keys = &atoms.keys[fld as usize];

    // Local atom ids (only the atoms this hook uses) and who uses them.
    let mut local = FastMap::<u32, u32>::default();
    let mut used: Vec<u32> = Vec::new();
    let mut need = vec![0u32; n];
    let mut held = vec![0u32; n];
    let mut occ: Vec<(u32, u32, bool)> = Vec::with_capacity(occurrences.len());
    for &(e, id, neg) in occurrences {
        let l = *local.entry(id).or_insert_with(|| {
            used.push(id);
            used.len() as u32 - 1
        });
        occ.push((l, e, neg));
        need[e as usize] += 1;
        // At the root no atom contains the key: negated ones hold.
        held[e as usize] += u32::from(neg);
    }
    drop(local);
    let mut start = vec![0usize; used.len() + 1];
    for &(l, _, _) in &occ {
        start[l as usize + 1] += 1;
    }
    for i in 0..used.len() {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut users = vec![(0u32, false); occ.len()];
    for &(l, e, neg) in &occ {
        users[fill[l as usize]] = (e, neg);
        fill[l as usize] += 1;
    }
    drop(occ);

    // The trie's nodes, in depth-first order: sorted by value, then
    // shorter prefixes first.
    let mut pieces: Vec<(u32, u8, u32)> = Vec::new();
    if fld == field::IN || fld == field::OUT {
        // ifindex 0 is "no interface": the empty name.
        let names = std::iter::once(("", 0u32)).chain(ifaces.iter().map(|(s, i)| (s.as_str(), *i)));
        for (l, &g) in used.iter().enumerate() {
            let key = &keys[g as usize];
            if key.is_any_iface() {
                pieces.push((0, 0, l as u32));
                continue;
            }
            for (name, ifindex) in names.clone() {
                if key.iface_matches(name) {
                    pieces.push((ifindex, 32, l as u32));
                }
            }
        }
        // Every interface is a piece even when no atom names it, so the
        // bare `+` and negations still classify it (and the default class
        // stays the class of the unknown).
        for (_, ifindex) in names {
            pieces.push((ifindex, 32, u32::MAX));
        }
    } else {
        for (l, &g) in used.iter().enumerate() {
            for &(v, len) in keys[g as usize].prefixes() {
                pieces.push((v, len, l as u32));
            }
        }
    }
    pieces.push((0, 0, u32::MAX));
    pieces.sort_unstable();
    let mut node_atoms: Vec<u32> = Vec::with_capacity(pieces.len());
    let mut nodes: Vec<Node> = Vec::new();
    for (v, len, l) in pieces {
        if !nodes.last().is_some_and(|n| n.value == v && n.len == len) {
            let at = node_atoms.len();
            nodes.push(Node {
                value: v,
                len,
                atoms: at..at,
            });
        }
        if l != u32::MAX {
            node_atoms.push(l);
            nodes.last_mut().expect("a node").atoms.end = node_atoms.len();
        }
    }

    let mut set = BitSet::new(n);
    for e in 0..n {
        if need[e] > 0 && held[e] == need[e] {
            set.set(e as u32, true);
        }
    }
    let mut out = FieldClasses {
        wild: words_of((0..n as u32).filter(|&e| need[e as usize] == 0)),
        starts: vec![0],
        ..FieldClasses::default()
    };
    // Classes by the hash of their words; `same_hash` chains the classes
    // that share one, so the arena needs no map keyed by slices.
    let mut by_hash: FastMap<u64, u32> = FastMap::default();
    let mut same_hash: Vec<u32> = Vec::new();
    let mut scratch: Words = Vec::new();
    // (node, class of the LPM entry that answers for it)
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let apply = |node: &Node, sign: bool, set: &mut BitSet, held: &mut [u32]| {
        for &l in &node_atoms[node.atoms.clone()] {
            for &(e, neg) in &users[start[l as usize]..start[l as usize + 1]] {
                let h = &mut held[e as usize];
                // Inside the atom: a positive atom now holds, a negated one
                // no longer does (and the reverse when leaving).
                if neg == sign {
                    *h -= 1;
                } else {
                    *h += 1;
                }
                set.set(e, *h == need[e as usize]);
            }
        }
    };
    for (i, node) in nodes.iter().enumerate() {
        while let Some(&(top, _)) = stack.last() {
            let t = &nodes[top];
            if contains((t.value, t.len), (node.value, node.len)) {
                break;
            }
            apply(t, false, &mut set, &mut held);
            stack.pop();
        }
        apply(node, true, &mut set, &mut held);
        set.words_into(&mut scratch);
        let hash = hash_words(&scratch);
        let mut found = by_hash.get(&hash).copied();
        while let Some(c) = found {
            if out.class(c) == scratch.as_slice() {
                break;
            }
            found = Some(same_hash[c as usize]).filter(|&n| n != u32::MAX);
        }
        let class = found.unwrap_or_else(|| {
            let c = out.class_count() as u32;
            out.words.extend_from_slice(&scratch);
            out.starts.push(out.words.len() as u32);
            same_hash.push(by_hash.insert(hash, c).unwrap_or(u32::MAX));
            c
        });
        // A piece whose class is the one its covering entry already gives
        // needs no LPM entry of its own.
        let covering = stack.last().map(|&(_, c)| c);
        if covering != Some(class) {
            out.lpm.push(LpmEntry {
                value: node.value,
                len: node.len,
                class,
            });
        }
        stack.push((i, class));
    }
    out
}

fn hash_words(words: &[(u32, u64)]) -> u64 {
    let mut h = FastHasher::default();
    for &(b, w) in words {
        h.write_u32(b);
        h.write_u64(w);
    }
    h.finish()
}

/// A dense bitset over entries that also keeps a bit per non-zero word,
/// so reading it costs what it holds plus one word per 4096 entries.
struct BitSet {
    words: Vec<u64>,
    nonzero: Vec<u64>,
}

impl BitSet {
    fn new(n: usize) -> BitSet {
        let words = n.div_ceil(64);
        BitSet {
            words: vec![0; words],
            nonzero: vec![0; words.div_ceil(64)],
        }
    }

    fn set(&mut self, e: u32, on: bool) {
        let (b, bit) = ((e / 64) as usize, 1u64 << (e % 64));
        let w = &mut self.words[b];
        if on {
            *w |= bit;
        } else {
            *w &= !bit;
        }
        let (s, sbit) = (b / 64, 1u64 << (b % 64));
        if *w == 0 {
            self.nonzero[s] &= !sbit;
        } else {
            self.nonzero[s] |= sbit;
        }
    }

    fn words_into(&self, out: &mut Words) {
        out.clear();
        for (s, &bits) in self.nonzero.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let b = s * 64 + bits.trailing_zeros() as usize;
                out.push((b as u32, self.words[b]));
                bits &= bits - 1;
            }
        }
    }
}

/// The sparse words of an increasing sequence of entries.
pub(super) fn words_of(entries: impl IntoIterator<Item = u32>) -> Words {
    let mut out: Words = Vec::new();
    for e in entries {
        let (b, bit) = (e / 64, 1u64 << (e % 64));
        match out.last_mut() {
            Some((lb, w)) if *lb == b => *w |= bit,
            _ => out.push((b, bit)),
        }
    }
    out
}
