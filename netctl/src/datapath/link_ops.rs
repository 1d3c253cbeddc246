//! The two operations on a pinned tcx link that aya does not offer.
//!
//! * Detaching now. Unpinning a link drops its last reference, and the
//!   kernel releases a link from a workqueue (`bpf_link_put`), so the program
//!   would stay attached for a moment after `netctl` returns; a program
//!   attached again at once could run twice on a packet meanwhile.
//!   `BPF_LINK_DETACH` detaches before it returns.
//! * Replacing the program atomically (`BPF_LINK_UPDATE`): an upgraded
//!   netctl swaps the program under the link, so no packet ever meets a port
//!   without its fast path (and its rules) in between.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf_attr` for `BPF_LINK_UPDATE` (and, by its first field, `BPF_LINK_DETACH`).
#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout of `cmd`, and any pointer in it
/// valid for what `cmd` reads.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is valid for its size; the rest is the caller's.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the object pinned at `path`.
fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `pathname` points to a NUL-terminated string that outlives
    // the call.
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr)? };
    // SAFETY: on success the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the link pinned at `path` now, then removes the pin. A link
/// whose device is gone detaches with nothing to do.
pub fn detach_pinned(path: &Path) -> io::Result<()> {
    let fd = open_pin(path)?;
    let mut attr = LinkUpdate {
        link_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the attr holds only an fd.
    match unsafe { sys_bpf(BPF_LINK_DETACH, &mut attr) } {
        // ENOLINK: already defunct (its device went away).
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)
}

/// Replaces the program of the link pinned at `path` with `prog`.
pub fn update_pinned(path: &Path, prog: impl AsFd) -> io::Result<()> {
    let fd = open_pin(path)?;
    let mut attr = LinkUpdate {
        link_fd: fd.as_raw_fd() as u32,
        new_prog_fd: prog.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the attr holds only fds.
    unsafe { sys_bpf(BPF_LINK_UPDATE, &mut attr) }.map(|_| ())
}
