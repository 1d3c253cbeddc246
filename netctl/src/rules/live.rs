//! Rulesets made live in a topology's datapath: compile against the host
//! namespace's interfaces, swap the classifier maps, record the ruleset.
//! Every change goes through `install`, so the record and the maps agree.

use std::collections::{BTreeMap, BTreeSet};

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
    check_datapath(t)?;
    let nl = Nl::open(&t.host()).await?;
    let ifaces: Vec<(String, u32)> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    let compiled = compile(rs, &ifaces)?;
    let name = t.name.clone();
    let old: BTreeSet<u32> = previous.slots().into_iter().collect();
    let fresh: Vec<u32> = rs
        .slots()
        .into_iter()
        .filter(|s| !old.contains(s))
        .collect();
    let report = tokio::task::spawn_blocking(move || {
        let g = ruleset::next_generation(&name)?;
        ruleset::swap(&name, &compiled.image(g), &fresh)
    })
    .await
    .map_err(|e| Error::Invalid(format!("ruleset swap panicked: {e}")))??;
    store::save(&t.name, rs)?;
    Ok(report)
}

/// Replaces the whole ruleset (`rules restore`, a topology's `rules`).
pub async fn replace(t: &Topology, mut rs: Ruleset) -> Result<SwapReport> {
    let before = current(t)?;
    rs.assign_slots_avoiding(&before)?;
    install(t, &rs, &before).await
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
    if store::load(&t.name)?.is_none() {
        return Ok(BTreeMap::new());
    }
    let slots: BTreeSet<u32> = rs.slots().into_iter().collect();
    ruleset::counters(&t.name, &slots)
}
