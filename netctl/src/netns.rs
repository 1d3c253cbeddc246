//! Named network namespaces, made the way iproute2 makes them so that
//! `ip netns` and netctl see each other's: a bind mount of the namespace's
//! nsfs inode on `/run/netns/NAME`, with `/run/netns` a shared mount.
//!
//! Everything that needs to *be* in a namespace (unshare, setns) happens on
//! a short-lived `std::thread`, never on a tokio worker: a thread that
//! changed namespace must not go back to running other tasks.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};
use crate::names::check_netns_name;

pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Where a piece of work happens: the namespace netctl itself runs in, or a
/// named one under /run/netns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Netns {
    Current,
    Named(String),
}

impl Netns {
    pub fn named(name: impl Into<String>) -> Self {
        Netns::Named(name.into())
    }

    /// `None` → the current namespace; used by CLI flags and topology files.
    pub fn from_opt(name: Option<&str>) -> Self {
        match name {
            None => Netns::Current,
            Some(n) => Netns::Named(n.to_string()),
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Netns::Current => None,
            Netns::Named(n) => Some(n),
        }
    }

    /// Opens the namespace's nsfs file, the handle `setns` and netlink take.
    pub fn open(&self) -> Result<File> {
        match self {
            Netns::Current => {
                File::open("/proc/self/ns/net").map_err(|e| Error::io("open /proc/self/ns/net", e))
            }
            Netns::Named(n) => File::open(path_of(n)).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::NoSuchNetns(n.clone())
                } else {
                    Error::io(format!("open {}", path_of(n).display()), e)
                }
            }),
        }
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Current => f.write_str("(current)"),
            Netns::Named(n) => f.write_str(n),
        }
    }
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// Names of all namespaces under /run/netns, sorted.
pub fn list() -> Result<Vec<String>> {
    let mut names = Vec::new();
    match fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => {
            for entry in rd {
                let entry = entry.map_err(|e| Error::io("read /run/netns", e))?;
                if let Some(n) = entry.file_name().to_str() {
                    names.push(n.to_string());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read /run/netns", e)),
    }
    names.sort();
    Ok(names)
}

/// Makes /run/netns exist and be a shared mount point, as iproute2 does, so
/// that namespace mounts propagate to other mount namespaces.
fn prepare_run_dir() -> Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| Error::io("create /run/netns", e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        shared,
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::io("bind-mount /run/netns", e.into()))?;
            mount(
                None::<&str>,
                NETNS_RUN_DIR,
                None::<&str>,
                shared,
                None::<&str>,
            )
            .map_err(|e| Error::io("make /run/netns shared", e.into()))
        }
        Err(e) => Err(Error::io("make /run/netns shared", e.into())),
    }
}

/// Creates the named namespace and runs `init` inside it (on the thread that
/// created it) before returning its result. `init` typically opens a
/// netlink socket there, which stays bound to the namespace.
pub fn create<T, F>(name: &str, init: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    check_netns_name(name).map_err(Error::Invalid)?;
    prepare_run_dir()?;
    let path = path_of(name);
    // O_EXCL makes a concurrent or earlier namespace of the same name an
    // error instead of silently reusing it.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::NetnsExists(name.to_string())
            } else {
                Error::io(format!("create {}", path.display()), e)
            }
        })?;
    let mount_point = path.clone();
    let res = std::thread::spawn(move || -> io::Result<T> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &mount_point,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        init()
    })
    .join()
    .map_err(|_| Error::Invalid("namespace thread panicked".into()))?;
    match res {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&path);
            Err(Error::io(format!("create namespace {name}"), e))
        }
    }
}

/// Deletes a named namespace: unmounts and removes its file. The kernel
/// frees the namespace (and destroys its devices) once nothing else holds it.
pub fn delete(name: &str) -> Result<()> {
    check_netns_name(name).map_err(Error::Invalid)?;
    let path = path_of(name);
    if !path.exists() {
        return Err(Error::NoSuchNetns(name.to_string()));
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(Error::io(format!("unmount {}", path.display()), e.into())),
    }
    fs::remove_file(&path).map_err(|e| Error::io(format!("remove {}", path.display()), e))
}

/// Runs `f` on a fresh thread that has joined `ns`.
pub fn run_in<T, F>(ns: &Netns, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let file = ns.open()?;
    let what = format!("enter namespace {ns}");
    std::thread::spawn(move || -> io::Result<T> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
        drop(file);
        f()
    })
    .join()
    .map_err(|_| Error::Invalid("namespace thread panicked".into()))?
    .map_err(|e| Error::io(what, e))
}

/// Replaces the current process with `argv` run inside `name`. Unlike
/// `ip netns exec` it does not remount /sys, so /sys/fs/bpf stays visible.
pub fn exec(name: &str, argv: &[String]) -> Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    let file = Netns::named(name).open()?;
    if argv.is_empty() {
        return Err(Error::Invalid("no command given".into()));
    }
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io(format!("enter namespace {name}"), e.into()))?;
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(Error::io(format!("run {}", argv[0]), err))
}

/// A netlink route socket bound to the calling thread's namespace.
pub fn route_socket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    Ok(socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?)
}
