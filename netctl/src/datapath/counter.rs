//! The packet/byte counter program: the smallest program of the chain,
//! used to prove build, load and attach end to end.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use netctl_common::{IfCounters, MAP_IF_COUNTERS, PROG_TC_COUNT};

use super::{bpf_error, load_private};
use crate::{Error, Result};

/// The packet/byte counter program (`netctl_tc_count`) and its per-CPU map.
///
/// Dropping it detaches the program from every device and frees the map.
pub struct CounterProgram {
    ebpf: Ebpf,
    attached: Vec<(String, SchedClassifierLinkId)>,
}

impl std::fmt::Debug for CounterProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.attached.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("CounterProgram")
            .field("attached_ingress", &names)
            .finish_non_exhaustive()
    }
}

impl CounterProgram {
    /// Loads the embedded object and the counter program into the kernel.
    ///
    /// # Errors
    ///
    /// [`Error::Bpf`] when netctl was built with `AYA_BUILD_SKIP`, when the
    /// object or program cannot be loaded, and when the verifier rejects the
    /// program: then the message carries the verifier's log.
    pub fn load() -> Result<Self> {
        let mut ebpf = load_private()?;
        classifier(&mut ebpf)?
            .load()
            .map_err(|e| bpf_error(&format!("loading program {PROG_TC_COUNT}"), &e))?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches the program to TC ingress of `ifname` (tcx, after any programs
    /// already there). Traffic is unchanged; only counted.
    ///
    /// `ifname` is looked up in the calling thread's network namespace; see
    /// the [module docs](self).
    ///
    /// # Errors
    ///
    /// [`Error::Bpf`] when there is no such device in the calling thread's
    /// namespace or the kernel refuses the tcx link.
    pub fn attach_ingress(&mut self, ifname: &str) -> Result<()> {
        let link = classifier(&mut self.ebpf)?
            .attach(ifname, TcAttachType::Ingress)
            .map_err(|e| {
                bpf_error(
                    &format!("attaching {PROG_TC_COUNT} to {ifname} ingress"),
                    &e,
                )
            })?;
        self.attached.push((ifname.to_owned(), link));
        Ok(())
    }

    /// Packets and bytes seen per ingress ifindex, summed over CPUs, sorted by
    /// ifindex. Ifindexes belong to the namespace of the device they were
    /// counted on.
    ///
    /// # Errors
    ///
    /// [`Error::Bpf`] when the map cannot be read.
    pub fn counters(&self) -> Result<Vec<(u32, IfCounters)>> {
        let map = self
            .ebpf
            .map(MAP_IF_COUNTERS)
            .ok_or_else(|| Error::Bpf(format!("map {MAP_IF_COUNTERS} missing from the object")))?;
        let map: PerCpuHashMap<&MapData, u32, IfCounters> = PerCpuHashMap::try_from(map)
            .map_err(|e| bpf_error(&format!("opening map {MAP_IF_COUNTERS}"), &e))?;
        let mut out = map
            .iter()
            .map(|entry| {
                let (ifindex, per_cpu) =
                    entry.map_err(|e| bpf_error(&format!("reading map {MAP_IF_COUNTERS}"), &e))?;
                let sum = per_cpu
                    .iter()
                    .fold(IfCounters::default(), |acc, c| acc.add(*c));
                Ok((ifindex, sum))
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_unstable_by_key(|&(ifindex, _)| ifindex);
        Ok(out)
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(PROG_TC_COUNT)
        .ok_or_else(|| Error::Bpf(format!("program {PROG_TC_COUNT} missing from the object")))?
        .try_into()
        .map_err(|e| bpf_error(&format!("program {PROG_TC_COUNT}"), &e))
}
