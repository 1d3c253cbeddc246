//! The rule counters, which live in two maps by slot (see
//! `netctl_common::MAP_RS_COUNTERS_LOW`): reading, summing over CPUs and
//! zeroing them, whichever map a slot is in.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use aya::maps::{IterableMap, MapData, PerCpuArray, PerCpuHashMap};
use netctl_common::{IfCounters, MAP_RS_COUNTERS, MAP_RS_COUNTERS_LOW, RS_SLOTS_LOW};

use super::install::map_at;
use super::{batch, bpf_error};
use crate::error::{Error, Result};

fn e(what: &str) -> impl Fn(aya::maps::MapError) -> Error + '_ {
    move |err| bpf_error(what, &err)
}

pub struct RuleCounters {
    low: PerCpuArray<MapData, IfCounters>,
    high: PerCpuHashMap<MapData, u32, IfCounters>,
}

impl RuleCounters {
    /// The counter maps pinned in a topology's directory.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            low: PerCpuArray::try_from(map_at(dir, MAP_RS_COUNTERS_LOW)?)
                .map_err(e(MAP_RS_COUNTERS_LOW))?,
            high: PerCpuHashMap::try_from(map_at(dir, MAP_RS_COUNTERS)?)
                .map_err(e(MAP_RS_COUNTERS))?,
        })
    }

    /// Sets the counters of `slots` to zero. In the hash, only existing
    /// elements are looked at and removed (a missing one reads as zero, and
    /// the datapath creates it with its first count); they are few next to
    /// the slots of a ruleset.
    pub fn forget(&mut self, slots: &[u32]) -> Result<()> {
        let (low, high): (Vec<u32>, Vec<u32>) = slots.iter().partition(|&&s| s < RS_SLOTS_LOW);
        batch::zero_per_cpu::<u32, IfCounters>(self.low.map(), MAP_RS_COUNTERS_LOW, &low)?;
        if high.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<u32> = high.into_iter().collect();
        let map = self.high.map();
        let mut present = batch::hash_keys::<u32, IfCounters>(map, MAP_RS_COUNTERS, true)?;
        present.retain(|k| wanted.contains(k));
        batch::delete(map, MAP_RS_COUNTERS, &present).map(|_| ())
    }

    /// The counters of `slots`, summed over CPUs (zero for a slot never
    /// counted).
    pub fn read(&self, slots: &BTreeSet<u32>) -> Result<BTreeMap<u32, IfCounters>> {
        let mut out = BTreeMap::new();
        for &s in slots.range(..RS_SLOTS_LOW) {
            let per_cpu = self.low.get(&s, 0).map_err(e(MAP_RS_COUNTERS_LOW))?;
            out.insert(s, sum(per_cpu.iter()));
        }
        if slots.range(RS_SLOTS_LOW..).next().is_some() {
            for item in self.high.iter() {
                let (slot, per_cpu) = item.map_err(e(MAP_RS_COUNTERS))?;
                if slots.contains(&slot) {
                    out.insert(slot, sum(per_cpu.iter()));
                }
            }
        }
        for &s in slots {
            out.entry(s).or_default();
        }
        Ok(out)
    }

    /// Every slot that has counted, in slot order.
    pub fn nonzero(&self) -> Result<Vec<(u32, IfCounters)>> {
        let mut out = Vec::new();
        for (slot, item) in (0u32..).zip(self.low.iter()) {
            let per_cpu = item.map_err(e(MAP_RS_COUNTERS_LOW))?;
            out.push((slot, sum(per_cpu.iter())));
        }
        for item in self.high.iter() {
            let (slot, per_cpu) = item.map_err(e(MAP_RS_COUNTERS))?;
            out.push((slot, sum(per_cpu.iter())));
        }
        out.retain(|(_, c)| *c != IfCounters::default());
        out.sort_by_key(|(slot, _)| *slot);
        Ok(out)
    }
}

fn sum<'a>(per_cpu: impl Iterator<Item = &'a IfCounters>) -> IfCounters {
    per_cpu.fold(IfCounters::default(), |a, c| a.add(*c))
}
