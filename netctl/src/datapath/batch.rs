//! Writing many elements to a map in one `BPF_MAP_UPDATE_BATCH` call
//! instead of one syscall each: a 10,000-rule ruleset is ~100,000 map
//! elements, and one syscall per element alone takes longer than the
//! 100 ms a replace may take. aya 0.14 has no batch API, hence the raw
//! syscall here, kept to this one place.

use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::MapData;

use crate::error::{Error, Result};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `items` into `map` (a hash or array map; not an LPM trie, which
/// has no batch operations), in chunks. Falls back to nothing: an error
/// names the map and the cause.
pub fn update<K: Pod, V: Pod>(map: &MapData, name: &str, items: &[(K, V)]) -> Result<()> {
    let fd = map.fd().as_fd().as_raw_fd();
    for chunk in items.chunks(8192) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut done = 0usize;
        while done < chunk.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: (chunk.len() - done) as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            // SAFETY: `attr` is a valid `bpf_attr.batch` whose key and
            // value pointers cover `count` elements of the map's key and
            // value sizes (the types are the map's Pod types), alive for
            // the call; the kernel writes back only `count`.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            if rc < 0 {
                return Err(Error::io(
                    format!("batch update of map {name}"),
                    std::io::Error::last_os_error(),
                ));
            }
            if attr.count == 0 {
                return Err(Error::Invalid(format!(
                    "batch update of map {name} made no progress"
                )));
            }
            done += attr.count as usize;
        }
    }
    Ok(())
}
