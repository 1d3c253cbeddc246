//! Writing and deleting many elements of a map in one `BPF_MAP_UPDATE_BATCH`
//! or `BPF_MAP_DELETE_BATCH` call instead of one syscall each: a
//! 10,000-rule ruleset is ~100,000 map elements, and one syscall per
//! element alone takes longer than the 100 ms a replace may take. aya 0.14
//! has no batch API, hence the raw syscall here, kept to this one place.
//! Hash, array and LPM trie maps all have both (the kernel's generic batch
//! operations, which do one element after the other, each as a single
//! update or delete would).

use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::MapData;

use crate::error::{Error, Result};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Elements per call: bounds the copies made here, and the time the
/// kernel spends in one call.
const CHUNK: usize = 8192;

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

/// One batch call over `count` keys (and values, for an update); returns
/// how many elements the kernel got through, and its error if it stopped
/// short.
///
/// # Safety
///
/// `keys` (and `values`, unless null) must point to `count` elements of the
/// map's key (value) size, alive for the call.
unsafe fn call(
    cmd: libc::c_long,
    map: &MapData,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> (usize, Option<std::io::Error>) {
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: count as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the caller vouches for the key and value pointers.
    let err = unsafe { bpf_batch(cmd, &mut attr) };
    (attr.count as usize, err)
}

/// The `bpf(cmd, attr)` system call for a batch command.
///
/// # Safety
/// `attr`'s pointers must be valid for what `cmd` reads and writes; the
/// kernel writes back only `count` and the batch token.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> Option<std::io::Error> {
    // SAFETY: `attr` is a valid `bpf_attr.batch`; the rest is the caller's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    (rc < 0).then(std::io::Error::last_os_error)
}

/// Writes `items` into `map` (a hash, array or LPM trie map), in chunks.
/// An error names the map and the cause.
pub fn update<K: Pod, V: Pod>(map: &MapData, name: &str, items: &[(K, V)]) -> Result<()> {
    let mut keys: Vec<K> = Vec::with_capacity(items.len().min(CHUNK));
    let mut values: Vec<V> = Vec::with_capacity(items.len().min(CHUNK));
    for chunk in items.chunks(CHUNK) {
        keys.clear();
        values.clear();
        keys.extend(chunk.iter().map(|(k, _)| *k));
        values.extend(chunk.iter().map(|(_, v)| *v));
        update_chunk(map, name, &keys, &values, 1)?;
    }
    Ok(())
}

/// Sets the values of `keys` in the per-CPU map `map` (hash or array) to
/// `V::default()` on every CPU, in chunks. `V`'s size must be a multiple
/// of 8, the kernel's per-CPU value stride.
pub fn zero_per_cpu<K: Pod, V: Pod + Default>(map: &MapData, name: &str, keys: &[K]) -> Result<()> {
    debug_assert_eq!(std::mem::size_of::<V>() % 8, 0);
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| Error::io(format!("batch update of map {name}"), e))?;
    let zeros = vec![V::default(); keys.len().min(CHUNK) * cpus];
    for chunk in keys.chunks(CHUNK) {
        update_chunk(map, name, chunk, &zeros[..chunk.len() * cpus], cpus)?;
    }
    Ok(())
}

/// One chunk of an update: `keys`, with `per_key` values each in `values`
/// (1, or one per possible CPU for a per-CPU map).
fn update_chunk<K: Pod, V: Pod>(
    map: &MapData,
    name: &str,
    keys: &[K],
    values: &[V],
    per_key: usize,
) -> Result<()> {
    let mut done = 0usize;
    while done < keys.len() {
        // SAFETY: `keys` and `values` hold the map's keys and, `per_key`
        // to a key, its values (its Pod types), from `done` on.
        let (n, err) = unsafe {
            call(
                BPF_MAP_UPDATE_BATCH,
                map,
                keys[done..].as_ptr().cast(),
                values[done * per_key..].as_ptr().cast(),
                keys.len() - done,
            )
        };
        if let Some(err) = err {
            return Err(Error::io(format!("batch update of map {name}"), err));
        }
        if n == 0 {
            return Err(Error::Invalid(format!(
                "batch update of map {name} made no progress"
            )));
        }
        done += n;
    }
    Ok(())
}

/// Deletes `keys` from `map` (a hash or LPM trie map), in chunks. Keys the
/// map does not hold are passed over; returns how many there were.
pub fn delete<K: Pod>(map: &MapData, name: &str, keys: &[K]) -> Result<usize> {
    let mut missing = 0;
    let mut done = 0usize;
    while done < keys.len() {
        let count = (keys.len() - done).min(CHUNK);
        // SAFETY: `keys[done..]` holds at least `count` keys of the map's
        // key type (its Pod type).
        let (n, err) = unsafe {
            call(
                BPF_MAP_DELETE_BATCH,
                map,
                keys[done..].as_ptr().cast(),
                std::ptr::null(),
                count,
            )
        };
        done += n;
        match err {
            None if n == 0 => {
                return Err(Error::Invalid(format!(
                    "batch delete in map {name} made no progress"
                )));
            }
            None => {}
            // The kernel stops at the first key it does not hold: skip it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) && done < keys.len() => {
                missing += 1;
                done += 1;
            }
            Some(e) => return Err(Error::io(format!("batch delete in map {name}"), e)),
        }
    }
    Ok(missing)
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The element-access member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

/// Every key of `map` (one syscall each: for when they are not known).
pub fn keys<K: Pod>(map: &MapData, name: &str) -> Result<Vec<K>> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut out: Vec<K> = Vec::new();
    // SAFETY: every bit pattern is a valid `K` (Pod); overwritten by the
    // kernel before it is read.
    let mut next: K = unsafe { std::mem::zeroed() };
    loop {
        let mut attr = ElemAttr {
            map_fd: fd,
            key: out.last().map_or(0, |k| k as *const K as u64),
            next_key: &mut next as *mut K as u64,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` for BPF_MAP_GET_NEXT_KEY;
        // `key` is null or points to a key of the map's key size (`K`),
        // `next_key` to room for one.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(out);
            }
            return Err(Error::io(format!("read the keys of map {name}"), err));
        }
        out.push(next);
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every key of the hash map `map`, whose values are `V` (per CPU if
/// `per_cpu`), read in batches (a few syscalls for all of them).
pub fn hash_keys<K: Pod, V: Pod>(map: &MapData, name: &str, per_cpu: bool) -> Result<Vec<K>> {
    let err = |e| Error::io(format!("read the keys of map {name}"), e);
    // What the kernel writes per value: per-CPU values are 8-byte aligned,
    // one for every possible CPU.
    let value_len = if per_cpu {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(e))?;
        std::mem::size_of::<V>().next_multiple_of(8) * cpus
    } else {
        std::mem::size_of::<V>()
    };
    let mut count = 4096usize;
    let mut out: Vec<K> = Vec::new();
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<u64> = Vec::new();
    let mut token = 0u32;
    let mut first = true;
    loop {
        keys.resize(count, zeroed());
        values.resize((count * value_len).div_ceil(8), 0);
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u32 as u64
            },
            out_batch: &mut token as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch` for a hash map, whose
        // batch token is a u32 (`token`, read and written); `keys` and
        // `values` have room for `count` keys and values as the kernel
        // writes them; it writes back `count`.
        let e = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        match e.as_ref().and_then(|e| e.raw_os_error()) {
            // A bucket holds more elements than `count`: ask for more.
            Some(libc::ENOSPC) if count < 1 << 20 => {
                count *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            _ => return Err(err(e.expect("an error"))),
        }
        out.extend_from_slice(&keys[..(attr.count as usize).min(count)]);
        if e.is_some() {
            // ENOENT: the last buckets were read.
            return Ok(out);
        }
        first = false;
    }
}

fn zeroed<K: Pod>() -> K {
    // SAFETY: every bit pattern is a valid `K` (Pod).
    unsafe { std::mem::zeroed() }
}

/// Elements per job of `parallel`: small enough to share the work out
/// evenly, large enough that a job is mostly kernel work.
pub const JOB: usize = 4096;

/// A piece of work for `parallel`: some batch calls, returning a count.
pub type Job<'a> = Box<dyn Fn() -> Result<usize> + Send + Sync + 'a>;

/// Runs `jobs` on up to as many threads as there are CPUs (at most four),
/// this one included, and sums their counts. The kernel's map updates and
/// deletes are mostly per-element work under per-bucket locks, so they
/// scale with the threads. After an error no further job starts; the first
/// error is returned.
pub fn parallel(jobs: &[Job<'_>]) -> Result<usize> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> Result<usize> {
        let mut sum = 0;
        loop {
            let i = next.fetch_add(1, Relaxed);
            if i >= jobs.len() || failed.load(Relaxed) {
                return Ok(sum);
            }
            match jobs[i]() {
                Ok(n) => sum += n,
                Err(e) => {
                    failed.store(true, Relaxed);
                    return Err(e);
                }
            }
        }
    };
    if threads <= 1 {
        return work();
    }
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut result = work();
        for h in others {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("a map writer thread panicked".into())));
            result = match (result, r) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        result
    })
}

/// `update` of `items` as jobs of `JOB` elements, for `parallel`.
pub fn update_jobs<'a, K: Pod + Sync, V: Pod + Sync>(
    map: &'a MapData,
    name: &'a str,
    items: &'a [(K, V)],
) -> impl Iterator<Item = Job<'a>> {
    items
        .chunks(JOB)
        .map(move |c| -> Job<'a> { Box::new(move || update(map, name, c).map(|()| 0)) })
}

/// `delete` of `keys` as jobs of `JOB` keys, for `parallel`; their counts
/// are the keys the map did not hold.
pub fn delete_jobs<'a, K: Pod + Sync>(
    map: &'a MapData,
    name: &'a str,
    keys: &'a [K],
) -> impl Iterator<Item = Job<'a>> {
    keys.chunks(JOB)
        .map(move |c| -> Job<'a> { Box::new(move || delete(map, name, c)) })
}
