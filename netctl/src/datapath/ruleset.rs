//! Making a compiled ruleset live in a topology's pinned classifier maps,
//! atomically: the new generation is written beside the live one, one
//! write of `config::RULES_SERIAL` switches every packet over, then the old
//! generation is cleared. Also reads and clears the rule counters.

use std::collections::BTreeSet;
use std::time::Instant;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuHashMap};
use netctl_common::{
    IfCounters, MAP_CONFIG, MAP_RS_CLASS, MAP_RS_COUNTERS, MAP_RS_ENTRIES, MAP_RS_HOOKS,
    MAP_RS_LOG, MAP_RS_SUMMARY, MAP_RS_WORDS, RS_LOG_LEN, RsHook, RsSummary, RsWordKey, config,
    hook,
};

use super::install::map_at;
use super::pins::topology_dir;
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

/// Writes `image` (built for `next_generation`) and switches to it. The
/// counters of `fresh_slots` (slots the old ruleset did not use) are zeroed
/// first, so new rules start from zero while kept ones keep counting.
pub fn swap(topology: &str, image: &MapImage, fresh_slots: &[u32]) -> Result<SwapReport> {
    let dir = topology_dir(topology);
    let mut cfg: Array<MapData, u32> =
        Array::try_from(map_at(&dir, MAP_CONFIG)?).map_err(e(MAP_CONFIG))?;
    let (old, serial) = live(&cfg)?;
    let new = image.generation;
    if new == old {
        return Err(Error::Invalid(format!(
            "ruleset image built for generation {new}, which is the live one"
        )));
    }
    let mut hooks: Array<MapData, RsHook> =
        Array::try_from(map_at(&dir, MAP_RS_HOOKS)?).map_err(e(MAP_RS_HOOKS))?;
    let mut class: LpmTrie<MapData, [u8; 8], u32> =
        LpmTrie::try_from(map_at(&dir, MAP_RS_CLASS)?).map_err(e(MAP_RS_CLASS))?;
    let mut summary: HashMap<MapData, RsWordKey, RsSummary> =
        HashMap::try_from(map_at(&dir, MAP_RS_SUMMARY)?).map_err(e(MAP_RS_SUMMARY))?;
    let mut words: HashMap<MapData, RsWordKey, u64> =
        HashMap::try_from(map_at(&dir, MAP_RS_WORDS)?).map_err(e(MAP_RS_WORDS))?;
    // Written in batches through the raw map (see `batch`).
    let pin = |name: &str| {
        let p = dir.join(name);
        MapData::from_pin(&p).map_err(|err| bpf_error(&format!("open {}", p.display()), &err))
    };
    let entries_data = pin(MAP_RS_ENTRIES)?;
    let summary_data = pin(MAP_RS_SUMMARY)?;
    let words_data = pin(MAP_RS_WORDS)?;
    let mut logs: Array<MapData, [u8; RS_LOG_LEN]> =
        Array::try_from(map_at(&dir, MAP_RS_LOG)?).map_err(e(MAP_RS_LOG))?;
    let mut counters: PerCpuHashMap<MapData, u32, IfCounters> =
        PerCpuHashMap::try_from(map_at(&dir, MAP_RS_COUNTERS)?).map_err(e(MAP_RS_COUNTERS))?;

    let t0 = Instant::now();
    // Leftovers of this generation (an earlier swap interrupted before its
    // cleanup) would otherwise mix into the new one. Finding them means
    // reading every key, so only after a swap that did not finish.
    if cfg.get(&config::RULES_DIRTY, 0).map_err(e(MAP_CONFIG))? != 0 {
        clear_generation(new, &mut hooks, &mut class, &mut summary, &mut words)?;
    }
    forget_counters(&mut counters, fresh_slots)?;
    batch::update(&entries_data, MAP_RS_ENTRIES, &image.entries)?;
    for (i, v) in &image.logs {
        logs.set(*i, v, 0).map_err(e(MAP_RS_LOG))?;
    }
    for (k, v) in &image.class {
        let data = [
            k.generation,
            k.hook,
            k.field,
            0,
            k.value[0],
            k.value[1],
            k.value[2],
            k.value[3],
        ];
        class
            .insert(&Key::new(k.prefixlen, data), v, 0)
            .map_err(e(MAP_RS_CLASS))?;
    }
    batch::update(&summary_data, MAP_RS_SUMMARY, &image.summary)?;
    batch::update(&words_data, MAP_RS_WORDS, &image.words)?;
    for (i, v) in &image.hooks {
        hooks.set(*i, v, 0).map_err(e(MAP_RS_HOOKS))?;
    }
    let any = image.hooks.iter().any(|(_, h)| h.entries > 0);
    if any {
        cfg.set(config::RULES_ON, 1, 0).map_err(e(MAP_CONFIG))?;
    }
    // The switch: generation and serial change in one write.
    cfg.set(config::RULES_SERIAL, serial.wrapping_add(1), 0)
        .map_err(e(MAP_CONFIG))?;
    if !any {
        cfg.set(config::RULES_ON, 0, 0).map_err(e(MAP_CONFIG))?;
    }
    let live_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    cfg.set(config::RULES_DIRTY, 1, 0).map_err(e(MAP_CONFIG))?;
    clear_generation(old, &mut hooks, &mut class, &mut summary, &mut words)?;
    cfg.set(config::RULES_DIRTY, 0, 0).map_err(e(MAP_CONFIG))?;
    Ok(SwapReport {
        elements: image.len(),
        live_seconds,
        cleanup_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// Removes every classifier element of generation `g` and empties its
/// hooks. Entries and LOG prefixes are arrays: unreferenced once the hooks
/// are empty, and overwritten by the next ruleset of that generation.
fn clear_generation(
    g: u8,
    hooks: &mut Array<MapData, RsHook>,
    class: &mut LpmTrie<MapData, [u8; 8], u32>,
    summary: &mut HashMap<MapData, RsWordKey, RsSummary>,
    words: &mut HashMap<MapData, RsWordKey, u64>,
) -> Result<()> {
    for h in 0..u32::from(hook::COUNT) {
        hooks
            .set(
                u32::from(g) * u32::from(hook::COUNT) + h,
                RsHook::default(),
                0,
            )
            .map_err(e(MAP_RS_HOOKS))?;
    }
    let stale: Vec<Key<[u8; 8]>> = class
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.data()[0] == g)
        .collect();
    for k in stale {
        class.remove(&k).map_err(e(MAP_RS_CLASS))?;
    }
    let stale: Vec<RsWordKey> = summary
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.generation == g)
        .collect();
    for k in stale {
        summary.remove(&k).map_err(e(MAP_RS_SUMMARY))?;
    }
    let stale: Vec<RsWordKey> = words
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.generation == g)
        .collect();
    for k in stale {
        words.remove(&k).map_err(e(MAP_RS_WORDS))?;
    }
    Ok(())
}

/// Removes the counters of `slots` that exist (a missing one reads as
/// zero, and the datapath creates it with its first count). Only existing
/// elements are looked at, which are few next to the slots of a ruleset.
fn forget_counters(m: &mut PerCpuHashMap<MapData, u32, IfCounters>, slots: &[u32]) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    let wanted: BTreeSet<u32> = slots.iter().copied().collect();
    let present: Vec<u32> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| wanted.contains(k))
        .collect();
    for k in present {
        m.remove(&k).map_err(e("zero rule counters"))?;
    }
    Ok(())
}

/// The rule counters of `slots`, summed over CPUs.
pub fn counters(
    topology: &str,
    slots: &BTreeSet<u32>,
) -> Result<std::collections::BTreeMap<u32, Counters>> {
    let dir = topology_dir(topology);
    let m: PerCpuHashMap<MapData, u32, IfCounters> =
        PerCpuHashMap::try_from(map_at(&dir, MAP_RS_COUNTERS)?).map_err(e(MAP_RS_COUNTERS))?;
    let mut out = std::collections::BTreeMap::new();
    for item in m.iter() {
        let (slot, values) = item.map_err(e("read rule counters"))?;
        if !slots.contains(&slot) {
            continue;
        }
        let sum = values.iter().fold(IfCounters::default(), |a, b| a.add(*b));
        out.insert(
            slot,
            Counters {
                packets: sum.packets,
                bytes: sum.bytes,
            },
        );
    }
    for &s in slots {
        out.entry(s).or_default();
    }
    Ok(out)
}

/// Zeroes the counters of `slots` (`-Z`).
pub fn zero_counters(topology: &str, slots: &[u32]) -> Result<()> {
    let dir = topology_dir(topology);
    let mut m: PerCpuHashMap<MapData, u32, IfCounters> =
        PerCpuHashMap::try_from(map_at(&dir, MAP_RS_COUNTERS)?).map_err(e(MAP_RS_COUNTERS))?;
    forget_counters(&mut m, slots)
}
