//! Where a topology's datapath lives in bpffs:
//! `/sys/fs/bpf/netctl/<topology>/` holds the maps (pinned by name) and
//! `links/` what is attached to each port `<ifname>@<ifindex>` (see
//! [`LinkPin`]). The ifindex is part of the name because a link dies with
//! its device: a port recreated under the same name must get a new link.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn bpffs_root() -> PathBuf {
    std::env::var_os("NETCTL_BPFFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"))
}

pub fn base_dir() -> PathBuf {
    bpffs_root().join("netctl")
}

pub fn topology_dir(topology: &str) -> PathBuf {
    base_dir().join(topology)
}

pub fn links_dir(topology: &str) -> PathBuf {
    topology_dir(topology).join("links")
}

/// Pinned programs, named by a hash of the object they come from so that an
/// upgraded netctl replaces them.
pub fn progs_dir(topology: &str) -> PathBuf {
    topology_dir(topology).join("progs")
}

/// The marker of the `lo` program in `links/` (no port: no `@ifindex`).
pub const LOCAL_PIN: &str = "local-lo";

/// What a `links/` pin stands for. Interface names cannot contain ':', so
/// the tcx prefixes are never part of a port's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPin {
    /// `<port>`: a pin of the ingress program marking the port's cls_bpf
    /// filters (the filters stay attached by themselves).
    Filters,
    /// `tcx-ingress:<port>`, `tcx-egress:<port>`: the port's tcx links.
    TcxIngress,
    TcxEgress,
    /// `xdp-<port>`: the port's XDP link.
    Xdp,
    /// `local-lo`: the `lo` program's marker.
    Local,
}

const TCX_INGRESS: &str = "tcx-ingress:";
const TCX_EGRESS: &str = "tcx-egress:";
const XDP: &str = "xdp-";

impl LinkPin {
    fn prefix(self) -> &'static str {
        match self {
            LinkPin::Filters | LinkPin::Local => "",
            LinkPin::TcxIngress => TCX_INGRESS,
            LinkPin::TcxEgress => TCX_EGRESS,
            LinkPin::Xdp => XDP,
        }
    }

    /// The pin's kind and the port (`<ifname>@<ifindex>`) it belongs to.
    pub fn split(name: &str) -> (LinkPin, &str) {
        if name == LOCAL_PIN {
            return (LinkPin::Local, name);
        }
        for kind in [LinkPin::TcxIngress, LinkPin::TcxEgress, LinkPin::Xdp] {
            if let Some(port) = name.strip_prefix(kind.prefix()) {
                return (kind, port);
            }
        }
        (LinkPin::Filters, name)
    }

    /// The pin's name for `port` (`<ifname>@<ifindex>`).
    pub fn name(self, port: &str) -> String {
        format!("{}{port}", self.prefix())
    }
}

/// Whether a `links/` pin marks a port as attached (one per port: its
/// cls_bpf marker or its tcx ingress link).
pub fn is_port_pin(name: &str) -> bool {
    matches!(
        LinkPin::split(name).0,
        LinkPin::Filters | LinkPin::TcxIngress
    )
}

/// bpffs refuses '.' in names; interface names may contain it.
pub fn link_pin_name(ifname: &str, ifindex: u32) -> String {
    format!("{}@{ifindex}", ifname.replace('.', "_"))
}

/// A private pin directory for loads that must not share anyone's maps
/// (verifier checks, the counter probe). Outside `netctl/`, so it is never
/// taken for a topology; the caller removes it.
pub fn scratch_dir() -> PathBuf {
    bpffs_root().join(format!("netctl-scratch-{}", std::process::id()))
}

/// `(ifname, ifindex)` from a link pin's file name.
pub fn parse_link_pin(name: &str) -> Option<(String, u32)> {
    let (n, i) = LinkPin::split(name).1.rsplit_once('@')?;
    Some((n.to_string(), i.parse().ok()?))
}

/// Creates the topology's pin directories (and `netctl/` above them).
pub fn create_topology_dirs(topology: &str) -> Result<()> {
    for d in [links_dir(topology), progs_dir(topology)] {
        // Another topology's teardown may remove an empty `netctl/` between
        // our mkdirs (see `remove_topology`); trying again settles it.
        let mut tries = 0;
        loop {
            match fs::create_dir_all(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
                Err(e) => return Err(Error::io(format!("create {}", d.display()), e)),
            }
        }
    }
    Ok(())
}

/// Removes a topology's pins, and `netctl/` itself once no topology is
/// left, so that a machine without datapaths has nothing of netctl in
/// bpffs. Returns whether there was anything to remove.
pub fn remove_topology(topology: &str) -> Result<bool> {
    let dir = topology_dir(topology);
    if !dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
    // Fails harmlessly (ENOTEMPTY) while other topologies are pinned.
    let _ = fs::remove_dir(base_dir());
    Ok(true)
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there, as Cilium
/// does; a fresh machine has none.
pub fn ensure_bpffs() -> Result<()> {
    let root = bpffs_root();
    let st = nix::sys::statfs::statfs(&root)
        .map_err(|e| Error::io(format!("statfs {}", root.display()), e.into()))?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpffs"),
        &root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| Error::io(format!("mount bpffs on {}", root.display()), e.into()))
}

/// Topologies that have a datapath pinned.
pub fn topologies() -> Result<Vec<String>> {
    let mut v = Vec::new();
    match fs::read_dir(base_dir()) {
        Ok(rd) => {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    v.push(e.file_name().to_string_lossy().to_string());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read bpffs", e)),
    }
    v.sort();
    Ok(v)
}

/// Pinned link file names under `links/`.
pub fn link_pins(topology: &str) -> Result<Vec<String>> {
    list_files(&links_dir(topology))
}

/// Pinned map names of a topology.
pub fn map_pins(topology: &str) -> Result<Vec<String>> {
    list_files(&topology_dir(topology))
}

fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    v.push(e.file_name().to_string_lossy().to_string());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    }
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_name_their_kind_and_port() {
        let port = link_pin_name("veth.1", 7);
        assert_eq!(port, "veth_1@7");
        for kind in [
            LinkPin::Filters,
            LinkPin::TcxIngress,
            LinkPin::TcxEgress,
            LinkPin::Xdp,
        ] {
            let name = kind.name(&port);
            assert_eq!(LinkPin::split(&name), (kind, port.as_str()), "{name}");
            assert_eq!(parse_link_pin(&name), Some(("veth_1".into(), 7)));
        }
        assert_eq!(LinkPin::split(LOCAL_PIN).0, LinkPin::Local);
        assert!(is_port_pin("tcx-ingress:v@3") && is_port_pin("v@3"));
        assert!(!is_port_pin("tcx-egress:v@3") && !is_port_pin("xdp-v@3"));
        assert!(!is_port_pin(LOCAL_PIN));
    }
}
