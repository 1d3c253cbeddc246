//! The record of what each applied topology owns: its last applied model,
//! kept under /run/netctl (tmpfs, like /run/netns, so both vanish together
//! at reboot).

use std::fs;
use std::io;
use std::path::PathBuf;

use super::model::Topology;
use crate::error::{Error, Result};

pub fn run_dir() -> PathBuf {
    std::env::var_os("NETCTL_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/netctl"))
}

fn path_of(name: &str) -> PathBuf {
    run_dir().join("topologies").join(format!("{name}.json"))
}

pub fn load(name: &str) -> Result<Option<Topology>> {
    load_json(&path_of(name))
}

pub fn save(t: &Topology) -> Result<()> {
    save_json(&path_of(&t.name), t)
}

/// A JSON record under /run/netctl, `None` if there is none.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(p: &std::path::Path) -> Result<Option<T>> {
    match fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("record {} is corrupt: {e}", p.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

/// Writes a JSON record atomically (a crash leaves the old one or the new).
pub(crate) fn save_json<T: serde::Serialize>(p: &std::path::Path, v: &T) -> Result<()> {
    let dir = p.parent().expect("record path has a parent");
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(v).expect("records serialize");
    fs::write(&tmp, body).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    fs::rename(&tmp, p).map_err(|e| Error::io(format!("write {}", p.display()), e))
}

pub fn remove(name: &str) -> Result<()> {
    match fs::remove_file(path_of(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove topology record", e)),
    }
}

/// Names of all applied topologies.
pub fn list() -> Result<Vec<String>> {
    let dir = run_dir().join("topologies");
    let mut v = Vec::new();
    match fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if let Some(stem) = n.strip_suffix(".json") {
                    v.push(stem.to_string());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    }
    v.sort();
    Ok(v)
}
