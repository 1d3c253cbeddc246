//! The eBPF datapath loader: the programs of `netctl-ebpf`, embedded at build
//! time by `build.rs`, loaded and attached with aya.
//!
//! # Namespaces
//!
//! aya resolves interface names, and opens any netlink socket it needs, in the
//! network namespace of the *calling thread*. To attach to a device inside a
//! namespace, call [`CounterProgram::attach_ingress`] from a plain
//! `std::thread` that has `setns`'d into it (never from a tokio task). Loading
//! and reading maps are namespace-independent, and a tcx link is an fd: it
//! stays attached until the [`CounterProgram`] is dropped, whichever thread
//! drops it.

use std::{error::Error as StdError, fmt::Write as _};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use netctl_common::{IfCounters, MAP_IF_COUNTERS, PROG_TC_COUNT};

use crate::{Error, Result};

/// The eBPF object built from `netctl-ebpf`. Empty when netctl was built with
/// `AYA_BUILD_SKIP=1`.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl-ebpf"))
}

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
        let object = object();
        if object.is_empty() {
            return Err(Error::Bpf(
                "netctl was built without its eBPF programs (AYA_BUILD_SKIP); \
                 rebuild without it"
                    .into(),
            ));
        }
        let mut ebpf = Ebpf::load(object).map_err(|e| bpf_error("loading the eBPF object", &e))?;
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

/// `what: error: cause: ...`, skipping causes the message already contains
/// (aya's load error repeats its `io::Error` and appends the verifier log).
fn bpf_error(what: &str, e: &dyn StdError) -> Error {
    let mut msg = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            let _ = write!(msg, ": {text}");
        }
        source = cause.source();
    }
    Error::Bpf(msg)
}
