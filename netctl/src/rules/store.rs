//! The ruleset of each topology, as last made live: kept beside the
//! topology records under /run/netctl, so edits start from it and counters
//! are looked up by its slots.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::model::Ruleset;
use crate::error::{Error, Result};
use crate::topology::store::{load_json, run_dir, save_json};

fn path_of(name: &str) -> PathBuf {
    run_dir().join("rules").join(format!("{name}.json"))
}

pub fn load(name: &str) -> Result<Option<Ruleset>> {
    load_json(&path_of(name))
}

pub fn save(name: &str, rs: &Ruleset) -> Result<()> {
    save_json(&path_of(name), rs)
}

/// Forgets the topology's ruleset (its maps go with the datapath's pins).
pub fn remove(name: &str) -> Result<()> {
    let p = path_of(name);
    match fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {}", p.display()), e)),
    }
    // The directory goes once empty, so a run leaves /run/netctl as it was.
    let _ = fs::remove_dir(run_dir().join("rules"));
    Ok(())
}
