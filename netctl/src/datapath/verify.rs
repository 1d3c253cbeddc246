//! Loading programs of the embedded object through the kernel's verifier
//! without attaching them: `netctl datapath verify` checks that this kernel
//! accepts the datapath before any apply needs it.

use aya::programs::{ProgramError, SchedClassifier, Xdp};
use netctl_common::{PROG_EGRESS, PROG_INGRESS, PROG_LOCAL, PROG_TC_COUNT, PROG_XDP};
use serde::Serialize;

use super::{bpf_error, load_private};
use crate::error::{Error, Result};

/// The programs netctl attaches.
pub const PROGRAMS: [&str; 5] = [
    PROG_INGRESS,
    PROG_EGRESS,
    PROG_LOCAL,
    PROG_XDP,
    PROG_TC_COUNT,
];

#[derive(Debug, Serialize)]
pub struct Verified {
    pub program: String,
    /// Instructions after the kernel's rewrites.
    pub xlated_insns: Option<u32>,
    /// Instructions the verifier walked.
    pub verified_insns: Option<u32>,
}

/// Loads `name` and returns the verifier's statistics, or an error carrying
/// the verifier's log when it refuses the program.
pub fn verify(name: &str) -> Result<Verified> {
    let mut ebpf = load_private()?;
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Bpf(format!("no program {name} in the object")))?;
    let load = |r: std::result::Result<(), ProgramError>| {
        r.map_err(|e| bpf_error(&format!("the verifier rejected {name}"), &e))
    };
    let info = match prog {
        aya::programs::Program::SchedClassifier(p) => {
            let p: &mut SchedClassifier = p;
            load(p.load())?;
            p.info()
        }
        aya::programs::Program::Xdp(p) => {
            let p: &mut Xdp = p;
            load(p.load())?;
            p.info()
        }
        _ => {
            return Err(Error::Bpf(format!(
                "{name} is of a kind netctl does not load"
            )));
        }
    }
    .map_err(|e| bpf_error("program info", &e))?;
    Ok(Verified {
        program: name.to_string(),
        xlated_insns: info.size_translated().map(|b| b / 8),
        verified_insns: info.verified_instruction_count(),
    })
}
