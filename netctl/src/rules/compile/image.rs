//! The compiled ruleset as the exact key/value pairs of the classifier's
//! maps for one generation, so the loader only writes what it is given and
//! the simulator reads exactly what the kernel will.

use netctl_common::{
    RS_CLASS_WILD, RS_ENTRIES_MAX, RS_LOG_LEN, RS_LOG_MAX, RS_NAT_MAX, RS_SUMMARY_WORDS,
    RsClassKey, RsHook, RsNat, RsSummary, RsWordKey, RuleEntry, field, hook,
};

use super::Compiled;

/// Everything one generation of the classifier's maps holds. Keys of that
/// generation not listed here are stale and must be deleted; the five hook
/// headers are always listed, since an array slot cannot be deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapImage {
    pub generation: u8,
    /// `MAP_RS_HOOKS`: index `gen * 5 + hook`.
    pub hooks: Vec<(u32, RsHook)>,
    /// `MAP_RS_CLASS`: LPM key to class id.
    pub class: Vec<(RsClassKey, u32)>,
    /// `MAP_RS_SUMMARY` (`block` is `u32::MAX`); only non-empty classes.
    pub summary: Vec<(RsWordKey, RsSummary)>,
    /// `MAP_RS_WORDS`: only non-zero words.
    pub words: Vec<(RsWordKey, u64)>,
    /// `MAP_RS_ENTRIES`: index `(gen * 5 + hook) * RS_ENTRIES_MAX + entry`.
    pub entries: Vec<(u32, RuleEntry)>,
    /// `MAP_RS_LOG`: index `gen * RS_LOG_MAX + prefix`, NUL-padded.
    pub logs: Vec<(u32, [u8; RS_LOG_LEN])>,
    /// `MAP_RS_NAT`: index `gen * RS_NAT_MAX + action`.
    pub nat: Vec<(u32, RsNat)>,
}

impl MapImage {
    /// Map elements in all, for sizing and reports.
    pub fn len(&self) -> usize {
        self.hooks.len()
            + self.class.len()
            + self.summary.len()
            + self.words.len()
            + self.entries.len()
            + self.logs.len()
            + self.nat.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values written to the kernel.
    pub fn bytes(&self) -> usize {
        use std::mem::size_of;
        self.hooks.len() * (4 + size_of::<RsHook>())
            + self.class.len() * (size_of::<RsClassKey>() + 4)
            + self.summary.len() * (size_of::<RsWordKey>() + size_of::<RsSummary>())
            + self.words.len() * (size_of::<RsWordKey>() + 8)
            + self.entries.len() * (4 + size_of::<RuleEntry>())
            + self.logs.len() * (4 + RS_LOG_LEN)
            + self.nat.len() * (4 + size_of::<RsNat>())
    }
}

/// The key of a field's value in `MAP_RS_CLASS`: the value left-aligned in
/// 32 bits, big-endian (ifindexes too).
pub fn class_key(generation: u8, hook: u8, fld: u8, value: u32, len: u8) -> RsClassKey {
    RsClassKey {
        prefixlen: 32 + u32::from(len),
        generation,
        hook,
        field: fld,
        _pad: 0,
        value: value.to_be_bytes(),
    }
}

pub(super) fn build(c: &Compiled, generation: u8) -> MapImage {
    let g = u32::from(generation);
    let fields = || c.hooks.iter().flat_map(|h| h.fields.iter());
    let classes: usize = fields().map(|f| f.class_count() + 1).sum();
    let words: usize = fields().map(|f| f.words_len() + f.wild.len()).sum();
    let mut img = MapImage {
        generation,
        hooks: Vec::with_capacity(hook::COUNT as usize),
        class: Vec::with_capacity(fields().map(|f| f.lpm.len()).sum()),
        summary: Vec::with_capacity(classes),
        words: Vec::with_capacity(words),
        entries: Vec::with_capacity(c.hooks.iter().map(|h| h.entries.len()).sum()),
        logs: Vec::with_capacity(c.logs.len()),
        nat: Vec::with_capacity(c.nat.len()),
    };
    for (h, prog) in c.hooks.iter().enumerate() {
        let index = g * u32::from(hook::COUNT) + h as u32;
        img.hooks.push((
            index,
            RsHook {
                entries: prog.entries.len() as u32,
                nat_start: prog.nat_start,
                nat_end: prog.nat_end,
                raw_end: prog.raw_end,
            },
        ));
        img.entries.extend(
            prog.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (index * RS_ENTRIES_MAX + i as u32, *e)),
        );
        for (f, fc) in prog.fields.iter().enumerate() {
            let (hk, fk) = (h as u8, f as u8);
            debug_assert!(fc.lpm.first().is_some_and(|e| e.len == 0));
            debug_assert!(fc.lpm.iter().all(|e| e.len <= field::WIDTH[f]));
            img.class.extend(
                fc.lpm
                    .iter()
                    .map(|e| (class_key(generation, hk, fk, e.value, e.len), e.class)),
            );
            let classes = fc.classes().enumerate().map(|(i, w)| (i as u32, w));
            for (class, words) in classes.chain(std::iter::once((RS_CLASS_WILD, &fc.wild[..]))) {
                push_class(&mut img, generation, hk, fk, class, words);
            }
        }
    }
    img.logs.extend(c.logs.iter().enumerate().map(|(i, p)| {
        let mut buf = [0u8; RS_LOG_LEN];
        buf[..p.len()].copy_from_slice(p.as_bytes());
        (g * RS_LOG_MAX + i as u32, buf)
    }));
    img.nat.extend(
        c.nat
            .iter()
            .enumerate()
            .map(|(i, a)| (g * RS_NAT_MAX + i as u32, *a)),
    );
    img
}

fn push_class(
    img: &mut MapImage,
    generation: u8,
    hook: u8,
    fld: u8,
    class: u32,
    words: &[(u32, u64)],
) {
    if words.is_empty() {
        return;
    }
    let key = |block| RsWordKey {
        generation,
        hook,
        field: fld,
        _pad: 0,
        class,
        block,
    };
    let mut summary = RsSummary {
        words: [0; RS_SUMMARY_WORDS],
    };
    for &(b, w) in words {
        summary.words[(b / 64) as usize] |= 1 << (b % 64);
        img.words.push((key(b), w));
    }
    img.summary.push((key(u32::MAX), summary));
}
