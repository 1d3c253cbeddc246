//! The ruleset of each topology, as last made live: kept beside the
//! topology records under /run/netctl, so edits start from it and counters
//! are looked up by its slots.
//!
//! The record (`NAME.json`) is the ruleset as compact JSON, with its
//! counter slots first, `{"slots":[1,2,…],"tables":…}`: a restore needs
//! only the slots of the ruleset it replaces, and reads only them. (The
//! ruleset reads past them, so records with or without them read alike.)
//! Beside it, `NAME.keys` lists the map keys the live generation holds, so
//! the next swap can delete them without searching the maps.

use std::fs;
use std::io::{self, BufRead, Write as _};
use std::path::{Path, PathBuf};

use super::model::Ruleset;
use crate::datapath::ruleset::GenerationKeys;
use crate::error::{Error, Result};
use crate::topology::store::run_dir;

/// How a record starts: its slots come first.
const SLOTS: &[u8] = b"{\"slots\":[";

fn path_of(name: &str) -> PathBuf {
    run_dir().join("rules").join(format!("{name}.json"))
}

/// The keys the live generation holds, beside the record (see
/// `GenerationKeys`).
fn keys_path_of(name: &str) -> PathBuf {
    run_dir().join("rules").join(format!("{name}.keys"))
}

fn corrupt(p: &Path, e: String) -> Error {
    Error::Invalid(format!("record {} is corrupt: {e}", p.display()))
}

/// The record's bytes, `None` if there is none.
fn read(p: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

pub fn load(name: &str) -> Result<Option<Ruleset>> {
    let p = path_of(name);
    match read(&p)? {
        Some(b) => decode(&b).map(Some).map_err(|e| corrupt(&p, e)),
        None => Ok(None),
    }
}

/// Whether the topology has a ruleset record.
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// The counter slots of the recorded ruleset (`Ruleset::slots`), read
/// without the rest of the record; `None` if there is none.
pub fn load_slots(name: &str) -> Result<Option<Vec<u32>>> {
    let p = path_of(name);
    let f = match fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
    };
    let mut head = Vec::new();
    io::BufReader::with_capacity(64 * 1024, f)
        .read_until(b']', &mut head)
        .map_err(|e| Error::io(format!("read {}", p.display()), e))?;
    match slots_of(&head) {
        Some(slots) => slots.map(Some).map_err(|e| corrupt(&p, e)),
        // A record without them: the slots are in the ruleset only.
        None => Ok(load(name)?.map(|rs| rs.slots())),
    }
}

/// The slots at the start of a record (up to their `]`), `None` if it
/// does not start with them.
fn slots_of(head: &[u8]) -> Option<std::result::Result<Vec<u32>, String>> {
    let list = head.strip_prefix(SLOTS)?;
    let Some(list) = list.strip_suffix(b"]") else {
        return Some(Err("the slots do not end".into()));
    };
    if list.is_empty() {
        return Some(Ok(Vec::new()));
    }
    Some(
        list.split(|&c| c == b',')
            .map(|n| {
                std::str::from_utf8(n)
                    .ok()
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| format!("slot `{}'", String::from_utf8_lossy(n)))
            })
            .collect(),
    )
}

/// The ruleset of a record.
fn decode(b: &[u8]) -> std::result::Result<Ruleset, String> {
    serde_json::from_slice(b).map_err(|e| e.to_string())
}

/// The record of `rs`, as `save` writes it.
pub fn encode(rs: &Ruleset) -> Vec<u8> {
    let slots = rs.slots();
    let mut out = Vec::with_capacity(320 * slots.len() + 4096);
    out.extend_from_slice(SLOTS);
    for (i, s) in slots.into_iter().enumerate() {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{}{s}", if i == 0 { "" } else { "," });
    }
    out.push(b']');
    // The ruleset's own fields follow: its `{` becomes the `,` after the
    // slots (or goes, if it has none).
    let at = out.len();
    serde_json::to_writer(&mut out, rs).expect("records serialize");
    assert_eq!(out[at], b'{', "a ruleset is a JSON object");
    if out[at + 1] == b'}' {
        out.remove(at);
    } else {
        out[at] = b',';
    }
    out.push(b'\n');
    out
}

/// A record written beside the live one, put in its place by `commit`
/// (so a crash leaves the old record or the new).
pub struct Pending {
    tmp: PathBuf,
    path: PathBuf,
}

/// Writes `record` (from `encode`) for topology `name`, not yet in place.
pub fn prepare(name: &str, record: &[u8]) -> Result<Pending> {
    let path = path_of(name);
    let dir = path.parent().expect("record path has a parent");
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, record).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    Ok(Pending { tmp, path })
}

impl Pending {
    pub fn commit(self) -> Result<()> {
        fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))
    }

    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

pub fn save(name: &str, rs: &Ruleset) -> Result<()> {
    prepare(name, &encode(rs))?.commit()
}

/// The keys the last swap left live, if recorded and readable: only a
/// shortcut for the next swap, which checks them against its maps.
pub fn load_keys(name: &str) -> Option<GenerationKeys> {
    GenerationKeys::from_bytes(&fs::read(keys_path_of(name)).ok()?)
}

/// Records the keys a swap left live (atomically, as the other records).
pub fn save_keys(name: &str, keys: &GenerationKeys) -> Result<()> {
    let p = keys_path_of(name);
    let tmp = p.with_extension("keys.tmp");
    fs::write(&tmp, keys.to_bytes())
        .and_then(|()| fs::rename(&tmp, &p))
        .map_err(|e| Error::io(format!("write {}", p.display()), e))
}

/// Forgets the topology's ruleset (its maps go with the datapath's pins).
pub fn remove(name: &str) -> Result<()> {
    let (keys, record) = (keys_path_of(name), path_of(name));
    // Leftovers of a write cut short go too.
    for p in [
        keys.with_extension("keys.tmp"),
        record.with_extension("json.tmp"),
        keys,
        record,
    ] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", p.display()), e)),
        }
    }
    // The directory goes once empty, so a run leaves /run/netctl as it was.
    let _ = fs::remove_dir(run_dir().join("rules"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse::parse;

    fn ruleset() -> Ruleset {
        let mut rs = parse(include_str!("testdata/features.rules")).unwrap();
        rs.assign_slots().unwrap();
        rs
    }

    #[test]
    fn a_record_gives_its_ruleset_and_slots_back() {
        let rs = ruleset();
        let record = encode(&rs);
        assert_eq!(decode(&record).unwrap(), rs);
        let head = &record[..=record.iter().position(|&c| c == b']').unwrap()];
        assert_eq!(slots_of(head).unwrap().unwrap(), rs.slots());
        assert!(!rs.slots().is_empty());
        let empty = Ruleset::new();
        let record = encode(&empty);
        assert_eq!(decode(&record).unwrap(), empty);
        assert_eq!(
            slots_of(b"{\"slots\":[]").unwrap().unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn records_of_older_versions_still_read() {
        // Pretty JSON with every field written out, as records were.
        let rs = ruleset();
        let old = serde_json::to_vec_pretty(&serde_json::to_value(&rs).unwrap()).unwrap();
        assert_eq!(decode(&old).unwrap(), rs);
        assert!(slots_of(&old).is_none());
        let mut full = serde_json::to_value(&rs).unwrap();
        fill_nulls(&mut full);
        assert_eq!(decode(&serde_json::to_vec(&full).unwrap()).unwrap(), rs);
    }

    /// Writes absent matches out as `null`, as records before the compact
    /// form did.
    fn fill_nulls(v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                if m.contains_key("target") {
                    let matches = m.get_mut("matches").unwrap().as_object_mut().unwrap();
                    for k in [
                        "in_iface",
                        "out_iface",
                        "src",
                        "dst",
                        "proto",
                        "sport",
                        "dport",
                        "multiport",
                        "icmp",
                        "ctstate",
                    ] {
                        matches.entry(k).or_insert(Value::Null);
                    }
                }
                m.values_mut().for_each(fill_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(fill_nulls),
            _ => {}
        }
    }

    #[test]
    fn damaged_records_are_refused() {
        let record = encode(&ruleset());
        assert!(decode(&record[..record.len() / 2]).is_err());
        assert!(slots_of(b"{\"slots\":[1,x]").unwrap().is_err());
        assert!(slots_of(b"{\"slots\":[1,2").unwrap().is_err());
    }
}
