//! Making a compiled ruleset live in a topology's pinned classifier maps,
//! atomically: the new generation is written beside the live one, one
//! write of `config::RULES_SERIAL` switches every packet over, then the old
//! generation is cleared, by the keys the swap that wrote it kept
//! (`GenerationKeys`). Map elements are written and deleted in batches, on
//! every CPU (see `batch`). Also reads and clears the rule counters.

use std::collections::BTreeSet;
use std::time::Instant;

use aya::maps::{Array, MapData};
use netctl_common::{
    MAP_CONFIG, MAP_RS_CLASS, MAP_RS_ENTRIES, MAP_RS_HOOKS, MAP_RS_LOG, MAP_RS_NAT, MAP_RS_SUMMARY,
    MAP_RS_WORDS, RS_LOG_LEN, RsClassKey, RsHook, RsNat, RsSummary, RsWordKey, config, hook,
};

use super::install::{invalidate_remembered, map_at, wait_for_program_runs};
use super::pins::topology_dir;
use super::rule_counters::RuleCounters;
use super::{batch, bpf_error};
use crate::error::{Error, Result};
use crate::rules::compile::MapImage;
use crate::rules::model::Counters;

fn e(what: &str) -> impl Fn(aya::maps::MapError) -> Error + '_ {
    move |err| bpf_error(what, &err)
}

/// How a swap went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SwapReport {
    /// Map elements written for the new generation.
    pub elements: usize,
    /// From the first write to the switch: how long a replace takes to be
    /// live.
    pub live_seconds: f64,
    /// Clearing the old generation afterwards.
    pub cleanup_seconds: f64,
}

/// The generation that is live now (0 or 1) and the serial it goes by.
fn live(cfg: &Array<MapData, u32>) -> Result<(u8, u32)> {
    let serial = cfg
        .get(&config::RULES_SERIAL, 0)
        .map_err(e("read config"))?;
    Ok(((serial & 1) as u8, serial))
}

/// The generation a new ruleset must be built for.
pub fn next_generation(topology: &str) -> Result<u8> {
    let dir = topology_dir(topology);
    let cfg: Array<MapData, u32> =
        Array::try_from(map_at(&dir, MAP_CONFIG)?).map_err(e(MAP_CONFIG))?;
    Ok(live(&cfg)?.0 ^ 1)
}

/// The hash and LPM trie keys one generation holds, as the swap that made it
/// live wrote them: the next swap deletes exactly these after its switch
/// instead of reading every key of the maps (which takes longer than
/// writing them). Only believed for the maps and the serial it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationKeys {
    /// `config::RULES_SERIAL` while these keys are the live ones.
    pub serial: u32,
    /// Kernel ids of the class, summary and words maps: a datapath created
    /// anew has other maps, whatever the serial.
    pub maps: [u32; 3],
    pub class: Vec<RsClassKey>,
    pub summary: Vec<RsWordKey>,
    pub words: Vec<RsWordKey>,
}

const KEYS_MAGIC: &[u8; 8] = b"NCRSKEY1";
const KEY_LEN: usize = 12;

impl GenerationKeys {
    /// A compact binary form (12 bytes a key), for the record beside the
    /// ruleset's.
    pub fn to_bytes(&self) -> Vec<u8> {
        const HEAD: usize = KEYS_MAGIC.len() + 7 * 4;
        let keys = self.class.len() + self.summary.len() + self.words.len();
        let mut out = vec![0u8; HEAD + keys * KEY_LEN];
        let (head, body) = out.split_at_mut(HEAD);
        head[..KEYS_MAGIC.len()].copy_from_slice(KEYS_MAGIC);
        let counts = [self.class.len(), self.summary.len(), self.words.len()].map(|n| n as u32);
        for (o, n) in head[KEYS_MAGIC.len()..].chunks_exact_mut(4).zip(
            [self.serial, self.maps[0], self.maps[1], self.maps[2]]
                .into_iter()
                .chain(counts),
        ) {
            o.copy_from_slice(&n.to_le_bytes());
        }
        let (class, words) = body.split_at_mut(self.class.len() * KEY_LEN);
        for (o, k) in class.chunks_exact_mut(KEY_LEN).zip(&self.class) {
            o[0..4].copy_from_slice(&k.prefixlen.to_le_bytes());
            o[4..8].copy_from_slice(&[k.generation, k.hook, k.field, k._pad]);
            o[8..12].copy_from_slice(&k.value);
        }
        for (o, k) in words
            .chunks_exact_mut(KEY_LEN)
            .zip(self.summary.iter().chain(&self.words))
        {
            o[0..4].copy_from_slice(&[k.generation, k.hook, k.field, k._pad]);
            o[4..8].copy_from_slice(&k.class.to_le_bytes());
            o[8..12].copy_from_slice(&k.block.to_le_bytes());
        }
        out
    }

    /// The keys `to_bytes` wrote, `None` if `b` is not such a record.
    pub fn from_bytes(b: &[u8]) -> Option<GenerationKeys> {
        let rest = b.strip_prefix(KEYS_MAGIC)?;
        let (head, mut keys) = rest.split_at_checked(7 * 4)?;
        let n: Vec<u32> = head
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let counts = [n[4] as usize, n[5] as usize, n[6] as usize];
        if keys.len() != counts.iter().sum::<usize>().checked_mul(KEY_LEN)? {
            return None;
        }
        let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut take = |count: usize| {
            let (these, rest) = keys.split_at(count * KEY_LEN);
            keys = rest;
            these.chunks_exact(KEY_LEN)
        };
        let class = take(counts[0])
            .map(|k| RsClassKey {
                prefixlen: le(&k[0..4]),
                generation: k[4],
                hook: k[5],
                field: k[6],
                _pad: k[7],
                value: [k[8], k[9], k[10], k[11]],
            })
            .collect();
        let word = |k: &[u8]| RsWordKey {
            generation: k[0],
            hook: k[1],
            field: k[2],
            _pad: k[3],
            class: le(&k[4..8]),
            block: le(&k[8..12]),
        };
        let summary = take(counts[1]).map(word).collect();
        let words = take(counts[2]).map(word).collect();
        Some(GenerationKeys {
            serial: n[0],
            maps: [n[1], n[2], n[3]],
            class,
            summary,
            words,
        })
    }

    fn of(image: &MapImage, serial: u32, maps: [u32; 3]) -> GenerationKeys {
        GenerationKeys {
            serial,
            maps,
            class: image.class.iter().map(|(k, _)| *k).collect(),
            summary: image.summary.iter().map(|(k, _)| *k).collect(),
            words: image.words.iter().map(|(k, _)| *k).collect(),
        }
    }

    /// Whether these are all keys of generation `g`.
    fn all_of(&self, g: u8) -> bool {
        self.class.iter().all(|k| k.generation == g)
            && self.summary.iter().all(|k| k.generation == g)
            && self.words.iter().all(|k| k.generation == g)
    }
}

/// The classifier's maps of one topology, opened.
struct Maps {
    cfg: Array<MapData, u32>,
    hooks: Array<MapData, RsHook>,
    logs: Array<MapData, [u8; RS_LOG_LEN]>,
    nat: Array<MapData, RsNat>,
    counters: RuleCounters,
    /// Written and deleted in batches through the raw map (see `batch`).
    entries: MapData,
    class: MapData,
    summary: MapData,
    words: MapData,
    /// Kernel ids of `class`, `summary`, `words`.
    ids: [u32; 3],
    dir: std::path::PathBuf,
}

impl Maps {
    fn open(topology: &str) -> Result<Maps> {
        let dir = topology_dir(topology);
        let pin = |name: &str| {
            let p = dir.join(name);
            MapData::from_pin(&p).map_err(|err| bpf_error(&format!("open {}", p.display()), &err))
        };
        let id = |m: &MapData, name: &str| m.info().map(|i| i.id()).map_err(e(name));
        let class = pin(MAP_RS_CLASS)?;
        let summary = pin(MAP_RS_SUMMARY)?;
        let words = pin(MAP_RS_WORDS)?;
        let ids = [
            id(&class, MAP_RS_CLASS)?,
            id(&summary, MAP_RS_SUMMARY)?,
            id(&words, MAP_RS_WORDS)?,
        ];
        Ok(Maps {
            cfg: Array::try_from(map_at(&dir, MAP_CONFIG)?).map_err(e(MAP_CONFIG))?,
            hooks: Array::try_from(map_at(&dir, MAP_RS_HOOKS)?).map_err(e(MAP_RS_HOOKS))?,
            logs: Array::try_from(map_at(&dir, MAP_RS_LOG)?).map_err(e(MAP_RS_LOG))?,
            nat: Array::try_from(map_at(&dir, MAP_RS_NAT)?).map_err(e(MAP_RS_NAT))?,
            counters: RuleCounters::open(&dir)?,
            entries: pin(MAP_RS_ENTRIES)?,
            dir: dir.clone(),
            class,
            summary,
            words,
            ids,
        })
    }

    fn set_dirty(&mut self, dirty: bool) -> Result<()> {
        self.cfg
            .set(config::RULES_DIRTY, u32::from(dirty), 0)
            .map_err(e(MAP_CONFIG))
    }

    /// Writes generation `image.generation` and switches to it: after
    /// the last map element, the hook headers, then `RULES_ON` if the new
    /// ruleset has entries (it is switched off after the switch
    /// otherwise), then the serial, which makes it live.
    fn write_and_switch(&mut self, image: &MapImage, serial: u32, any: bool) -> Result<()> {
        self.write(image)?;
        for (i, v) in &image.hooks {
            self.hooks.set(*i, v, 0).map_err(e(MAP_RS_HOOKS))?;
        }
        if any {
            let was_on = self.cfg.get(&config::RULES_ON, 0).unwrap_or(0) != 0;
            self.cfg
                .set(config::RULES_ON, 1, 0)
                .map_err(e(MAP_CONFIG))?;
            // Frames of steady flows skip the rules on the strength of
            // flows remembered while there were none.
            if !was_on {
                wait_for_program_runs()?;
                invalidate_remembered(&self.dir)?;
            }
        }
        // The switch: generation and serial change in one write.
        self.cfg
            .set(config::RULES_SERIAL, serial.wrapping_add(1), 0)
            .map_err(e(MAP_CONFIG))
    }

    /// Writes generation `image.generation`, all but its hook headers.
    fn write(&mut self, image: &MapImage) -> Result<()> {
        for (i, v) in &image.logs {
            self.logs.set(*i, v, 0).map_err(e(MAP_RS_LOG))?;
        }
        for (i, v) in &image.nat {
            self.nat.set(*i, v, 0).map_err(e(MAP_RS_NAT))?;
        }
        // The LPM trie takes one lock for every change: one job, first,
        // while the other threads share out the hash maps'.
        let class = (&self.class, &image.class[..]);
        let jobs: Vec<batch::Job<'_>> =
            [
                Box::new(move || batch::update(class.0, MAP_RS_CLASS, class.1).map(|()| 0usize))
                    as batch::Job<'_>,
            ]
            .into_iter()
            .chain(batch::update_jobs(
                &self.entries,
                MAP_RS_ENTRIES,
                &image.entries,
            ))
            .chain(batch::update_jobs(&self.words, MAP_RS_WORDS, &image.words))
            .chain(batch::update_jobs(
                &self.summary,
                MAP_RS_SUMMARY,
                &image.summary,
            ))
            .collect();
        batch::parallel(&jobs).map(|_| ())
    }

    /// Empties generation `g`'s hooks: its entries and LOG prefixes are
    /// arrays, unreferenced then, and overwritten by the next ruleset of
    /// that generation.
    fn clear_hooks(&mut self, g: u8) -> Result<()> {
        for h in 0..u32::from(hook::COUNT) {
            let i = u32::from(g) * u32::from(hook::COUNT) + h;
            self.hooks
                .set(i, RsHook::default(), 0)
                .map_err(e(MAP_RS_HOOKS))?;
        }
        Ok(())
    }

    /// Removes generation `g` given the keys it holds: true if it held
    /// every one of them (else some other keys may be there too).
    fn clear_known(&mut self, g: u8, keys: &GenerationKeys) -> Result<bool> {
        self.clear_hooks(g)?;
        let class = (&self.class, &keys.class[..]);
        let jobs: Vec<batch::Job<'_>> =
            [Box::new(move || batch::delete(class.0, MAP_RS_CLASS, class.1)) as batch::Job<'_>]
                .into_iter()
                .chain(batch::delete_jobs(&self.words, MAP_RS_WORDS, &keys.words))
                .chain(batch::delete_jobs(
                    &self.summary,
                    MAP_RS_SUMMARY,
                    &keys.summary,
                ))
                .collect();
        let missing = batch::parallel(&jobs)?;
        Ok(missing == 0)
    }

    /// Removes every classifier element of generation `g`, finding them by
    /// reading every key of the maps: for when the keys are not known.
    fn clear_scan(&mut self, g: u8) -> Result<()> {
        self.clear_hooks(g)?;
        let mut stale = GenerationKeys {
            class: batch::keys::<RsClassKey>(&self.class, MAP_RS_CLASS)?,
            summary: batch::hash_keys::<RsWordKey, RsSummary>(
                &self.summary,
                MAP_RS_SUMMARY,
                false,
            )?,
            words: batch::hash_keys::<RsWordKey, u64>(&self.words, MAP_RS_WORDS, false)?,
            ..GenerationKeys::default()
        };
        stale.class.retain(|k| k.generation == g);
        stale.summary.retain(|k| k.generation == g);
        stale.words.retain(|k| k.generation == g);
        self.clear_known(g, &stale).map(|_| ())
    }
}

/// Writes `image` (built for `next_generation`) and switches to it. The
/// counters of `fresh_slots` (slots the old ruleset did not use) are zeroed
/// first, so new rules start from zero while kept ones keep counting.
/// `known` is what the previous swap returned, if kept: with it, the old
/// generation is cleared by its keys rather than by reading every key.
/// Returns the keys the new generation holds, for the next swap.
pub fn swap(
    topology: &str,
    image: &MapImage,
    fresh_slots: &[u32],
    known: Option<&GenerationKeys>,
) -> Result<(SwapReport, GenerationKeys)> {
    let mut m = Maps::open(topology)?;
    let (old, serial) = live(&m.cfg)?;
    let new = image.generation;
    if new == old {
        return Err(Error::Invalid(format!(
            "ruleset image built for generation {new}, which is the live one"
        )));
    }

    let t0 = Instant::now();
    m.counters.forget(fresh_slots)?;
    // `RULES_DIRTY` says the generation that is not live may hold
    // leftovers: set while it is written and until the old one is cleared
    // after the switch, so a swap cut short anywhere leaves it set. Then
    // the leftovers are found by reading every key, which is slow, so only
    // after a swap that did not finish.
    if m.cfg.get(&config::RULES_DIRTY, 0).map_err(e(MAP_CONFIG))? != 0 {
        m.clear_scan(new)?;
    } else {
        m.set_dirty(true)?;
    }
    let written = GenerationKeys::of(image, serial.wrapping_add(1), m.ids);
    let any = image.hooks.iter().any(|(_, h)| h.entries > 0);
    if let Err(err) = m.write_and_switch(image, serial, any) {
        // The live generation is untouched. Take back what was written, so
        // that the next swap need not search for it.
        if m.clear_known(new, &written).is_ok() {
            let _ = m.set_dirty(false);
        }
        return Err(err);
    }
    let live_seconds = t0.elapsed().as_secs_f64();

    // The new ruleset is live: nothing from here on fails the swap. If the
    // old generation is not cleared, `RULES_DIRTY` stays set and the next
    // swap clears it.
    if !any {
        let _ = m.cfg.set(config::RULES_ON, 0, 0);
    }
    let t1 = Instant::now();
    let known = known.filter(|k| k.serial == serial && k.maps == m.ids && k.all_of(old));
    let cleared = match known {
        Some(k) => m.clear_known(old, k),
        None => Ok(false),
    }
    .and_then(|all| if all { Ok(()) } else { m.clear_scan(old) });
    if cleared.is_ok() {
        let _ = m.set_dirty(false);
    }
    Ok((
        SwapReport {
            elements: image.len(),
            live_seconds,
            cleanup_seconds: t1.elapsed().as_secs_f64(),
        },
        written,
    ))
}

/// The rule counters of `slots`, summed over CPUs.
pub fn counters(
    topology: &str,
    slots: &BTreeSet<u32>,
) -> Result<std::collections::BTreeMap<u32, Counters>> {
    let read = RuleCounters::open(&topology_dir(topology))?.read(slots)?;
    Ok(read
        .into_iter()
        .map(|(slot, c)| {
            (
                slot,
                Counters {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            )
        })
        .collect())
}

/// Zeroes the counters of `slots` (`-Z`).
pub fn zero_counters(topology: &str, slots: &[u32]) -> Result<()> {
    RuleCounters::open(&topology_dir(topology))?.forget(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_keys_read_back() {
        let keys = GenerationKeys {
            serial: 0x0102_0304,
            maps: [7, 8, 0xffff_fffe],
            class: vec![
                RsClassKey {
                    prefixlen: 56,
                    generation: 1,
                    hook: 2,
                    field: 3,
                    _pad: 0,
                    value: [192, 168, 1, 0],
                },
                RsClassKey {
                    prefixlen: 32,
                    generation: 1,
                    ..RsClassKey::default()
                },
            ],
            summary: vec![RsWordKey {
                generation: 1,
                hook: 2,
                field: 5,
                _pad: 0,
                class: 0x1234_5678,
                block: u32::MAX,
            }],
            words: (0..3)
                .map(|b| RsWordKey {
                    generation: 1,
                    hook: 2,
                    field: 5,
                    _pad: 0,
                    class: 9,
                    block: b * 1000,
                })
                .collect(),
        };
        let b = keys.to_bytes();
        assert_eq!(b.len(), 8 + 7 * 4 + 6 * KEY_LEN);
        assert_eq!(GenerationKeys::from_bytes(&b), Some(keys.clone()));
        assert!(keys.all_of(1) && !keys.all_of(0));
        assert_eq!(GenerationKeys::from_bytes(&b[..b.len() - 1]), None);
        assert_eq!(GenerationKeys::from_bytes(&b[1..]), None);
        let empty = GenerationKeys::default();
        assert_eq!(GenerationKeys::from_bytes(&empty.to_bytes()), Some(empty));
    }
}
