//! Rulesets made live in a topology's datapath: compile against the host
//! namespace's interfaces, swap the classifier maps, record the ruleset.
//! Every change goes through `install`, so the record and the maps agree.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::compile::compile;
use super::model::{Counters, Ruleset};
use super::store;
use crate::datapath::pins::topology_dir;
use crate::datapath::ruleset::{self, SwapReport};
use crate::error::{Error, Result};
use crate::nl::Nl;
use crate::topology::Topology;
use crate::topology::model::Datapath;

/// The ruleset a topology runs now (an empty one if it never had any).
pub fn current(t: &Topology) -> Result<Ruleset> {
    Ok(store::load(&t.name)?.unwrap_or_default())
}

fn check_datapath(t: &Topology) -> Result<()> {
    if t.datapath != Datapath::Ebpf {
        return Err(Error::Invalid(format!(
            "topology {} uses the kernel datapath; rules need datapath = \"ebpf\"",
            t.name
        )));
    }
    if !topology_dir(&t.name)
        .join(netctl_common::MAP_CONFIG)
        .exists()
    {
        return Err(Error::Invalid(format!(
            "topology {} has no eBPF datapath attached (run `netctl apply` again)",
            t.name
        )));
    }
    Ok(())
}

/// Makes `rs` live in topology `t`. `previous` is what ran before: the
/// counters of slots it did not use are zeroed first, so new rules count
/// from zero while kept ones keep their counts.
pub async fn install(t: &Topology, rs: &Ruleset, previous: &Ruleset) -> Result<SwapReport> {
    install_over(t, rs, &previous.slots()).await
}

/// `install`, given the slots of the ruleset that ran before.
async fn install_over(t: &Topology, rs: &Ruleset, previous: &[u32]) -> Result<SwapReport> {
    check_datapath(t)?;
    let nl = Nl::open(&t.host()).await?;
    let ifaces: Vec<(String, u32)> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    // While the ruleset compiles, its record is written (put in place once
    // the swap is done) and the keys of the live generation are read.
    let name = t.name.clone();
    let (compiled, (record, known)) = std::thread::scope(|s| {
        let record = s.spawn(|| {
            let record = store::prepare(&name, &store::encode(rs));
            (record, store::load_keys(&name))
        });
        let compiled = compile(rs, &ifaces);
        let record = record.join().unwrap_or_else(|_| {
            let e = Error::Invalid("writing the ruleset record panicked".into());
            (Err(e), None)
        });
        (compiled, record)
    });
    let record = record?;
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => {
            record.discard();
            return Err(e);
        }
    };
    let old: HashSet<u32> = previous.iter().copied().collect();
    let fresh: Vec<u32> = rs
        .slots()
        .into_iter()
        .filter(|s| !old.contains(s))
        .collect();
    let swapped = tokio::task::spawn_blocking(move || {
        let g = ruleset::next_generation(&name)?;
        let img = compiled.image(g);
        ruleset::swap(&name, &img, &fresh, known.as_ref())
    })
    .await
    .unwrap_or_else(|e| Err(Error::Invalid(format!("ruleset swap panicked: {e}"))));
    let (report, keys) = match swapped {
        Ok(s) => s,
        Err(e) => {
            record.discard();
            return Err(e);
        }
    };
    // Without this record the next swap only clears the old generation
    // the slow way: not worth failing a swap that is done.
    let _ = store::save_keys(&t.name, &keys);
    record.commit()?;
    Ok(report)
}

/// Replaces the whole ruleset (`rules restore`, a topology's `rules`).
pub async fn replace(t: &Topology, mut rs: Ruleset) -> Result<SwapReport> {
    let before = store::load_slots(&t.name)?.unwrap_or_default();
    rs.assign_slots_avoiding_slots(&before)?;
    install_over(t, &rs, &before).await
}

/// Compiles the recorded ruleset again, after interfaces came or went.
pub async fn resync(t: &Topology) -> Result<Option<SwapReport>> {
    let Some(rs) = store::load(&t.name)? else {
        return Ok(None);
    };
    install(t, &rs, &rs).await.map(Some)
}

/// The counters of every rule and policy of `rs`.
pub fn counters(t: &Topology, rs: &Ruleset) -> Result<BTreeMap<u32, Counters>> {
    if !store::exists(&t.name) {
        return Ok(BTreeMap::new());
    }
    let slots: BTreeSet<u32> = rs.slots().into_iter().collect();
    ruleset::counters(&t.name, &slots)
}
