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

pub mod batch;
pub mod conntrack;
mod counter;
pub mod desired;
pub mod inspect;
pub mod install;
mod layout;
mod link_ops;
pub mod pins;
pub mod profile;
mod rule_counters;
pub mod ruleset;
pub mod trace;
pub mod verify;

use std::{error::Error as StdError, fmt::Write as _};

pub use counter::CounterProgram;
pub use desired::Desired;
pub use install::{detach, sync};

use crate::Error;

/// The eBPF object built from `netctl-ebpf`. Empty when netctl was built with
/// `AYA_BUILD_SKIP=1`.
pub(crate) fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl-ebpf"))
}

/// The embedded object, or an error saying it was not built.
pub(crate) fn embedded_object() -> crate::Result<&'static [u8]> {
    let obj = object();
    if obj.is_empty() {
        return Err(Error::Bpf(
            "netctl was built without its eBPF programs (AYA_BUILD_SKIP); rebuild without it"
                .into(),
        ));
    }
    Ok(obj)
}

/// Loads the object for a private use (a verifier check, the counter
/// probe): its datapath maps are declared pinned, so they are pinned in a
/// throwaway directory, removed again at once, so that no topology's pins
/// are shared or touched.
pub(crate) fn load_private() -> crate::Result<aya::Ebpf> {
    let obj = embedded_object()?;
    pins::ensure_bpffs()?;
    let dir = pins::scratch_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let loaded = aya::EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .load(obj);
    let _ = std::fs::remove_dir_all(&dir);
    loaded.map_err(|e| bpf_error("loading the eBPF object", &e))
}

/// `what: error: cause: ...`, skipping causes the message already contains
/// (aya's load error repeats its `io::Error` and appends the verifier log).
pub(crate) fn bpf_error(what: &str, e: &dyn StdError) -> Error {
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
