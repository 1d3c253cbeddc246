//! AF_PACKET sockets opened inside a namespace (the socket stays bound to
//! it whichever thread uses it), conntrack flushes over ctnetlink, and CPU
//! pinning. A receive waits for the frame (poll); its deadline only turns
//! a lost event into an error, nothing sleeps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use netctl::netns::{Netns, run_in};

use super::wire::{self, Rx};

/// An `ETH_P_ALL` packet socket bound to one device of one namespace.
pub struct PacketSock {
    fd: OwnedFd,
    ifindex: i32,
    pub what: String,
}

fn if_index(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name).unwrap();
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i as i32)
}

impl PacketSock {
    /// A socket that receives every frame of the device.
    pub fn open(ns: &str, dev: &str) -> anyhow::Result<PacketSock> {
        Self::open_proto(ns, dev, libc::ETH_P_ALL as u16)
    }

    /// A socket that only sends.
    pub fn sender(ns: &str, dev: &str) -> anyhow::Result<PacketSock> {
        Self::open_proto(ns, dev, 0)
    }

    fn open_proto(ns: &str, dev: &str, proto: u16) -> anyhow::Result<PacketSock> {
        let d = dev.to_string();
        let (fd, ifindex) = run_in(&Netns::named(ns), move || -> io::Result<_> {
            let proto = proto.to_be();
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    proto as i32,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = if_index(&d)?;
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // Room for a whole case's frames.
            let sz: libc::c_int = 4 << 20;
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &sz as *const _ as *const libc::c_void,
                    4,
                );
            }
            Ok((fd, ifindex))
        })
        .map_err(|e| anyhow::anyhow!("packet socket on {dev} in {ns}: {e}"))?;
        Ok(PacketSock {
            fd,
            ifindex,
            what: format!("{ns}/{dev}"),
        })
    }

    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            anyhow::bail!("send on {}: {}", self.what, io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame received by the device for itself (not one it sent,
    /// nor one for another MAC), waiting for it until `deadline`.
    pub fn recv(&self, deadline: Instant) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut alen,
                )
            };
            if n >= 0 {
                if sll.sll_pkttype == libc::PACKET_OUTGOING
                    || sll.sll_pkttype == libc::PACKET_OTHERHOST
                {
                    continue;
                }
                buf.truncate(n as usize);
                return Ok(buf);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                anyhow::bail!("recv on {}: {e}", self.what);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("nothing received on {} in time", self.what);
            }
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
        }
    }

    /// Receives until the marker `token`, returning the IPv4 packets that
    /// came before it (other frames, and other markers, are skipped).
    pub fn until_marker(&self, token: u64, within: Duration) -> anyhow::Result<Vec<wire::Ip>> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let f = self
                .recv(deadline)
                .map_err(|e| anyhow::anyhow!("waiting for marker {token:#x}: {e}"))?;
            match wire::classify(&f) {
                Rx::Marker(t) if t == token => return Ok(got),
                Rx::Ip(ip) => got.push(ip),
                _ => {}
            }
        }
    }

    /// Throws away whatever is queued.
    pub fn drain(&self) {
        let past = Instant::now();
        while self.recv(past).is_ok() {}
    }
}

/// The calling thread's CPU affinity.
pub fn affinity() -> io::Result<libc::cpu_set_t> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

pub fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to one CPU, so that every frame it sends is
/// queued on that CPU's backlog and processed in order.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins the calling thread to the first CPU it may run on (see
/// `pin_to_cpu`); returns the affinity it had, to restore afterwards.
pub fn pin_to_first_cpu() -> io::Result<libc::cpu_set_t> {
    let old = affinity()?;
    // SAFETY: CPU_ISSET reads the set within its bounds (c < CPU_SETSIZE).
    let cpu = (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &old) })
        .unwrap_or(0);
    pin_to_cpu(cpu)?;
    Ok(old)
}

/// Flushes the IPv4 conntrack table of namespace `ns` (what `conntrack -F`
/// does: an `IPCTNL_MSG_CT_DELETE` without attributes).
pub fn flush_conntrack(ns: &str) -> anyhow::Result<()> {
    run_in(&Netns::named(ns), || -> io::Result<()> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        const NFNL_SUBSYS_CTNETLINK: u16 = 1;
        const IPCTNL_MSG_CT_DELETE: u16 = 2;
        let mut m = Vec::with_capacity(20);
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, res_id
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        let r = unsafe { libc::send(fd.as_raw_fd(), m.as_ptr() as *const _, m.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n < 20 {
            return Err(io::Error::last_os_error());
        }
        // NLMSG_ERROR with error 0 is the ACK; ENOENT: the table was empty.
        let typ = u16::from_ne_bytes([buf[4], buf[5]]);
        if typ == libc::NLMSG_ERROR as u16 {
            let err = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
            if err != 0 && err != -libc::ENOENT {
                return Err(io::Error::from_raw_os_error(-err));
            }
        }
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("flush conntrack in {ns}: {e}"))
}

/// Empties a pinned BPF hash map (the netctl datapath's conntrack table,
/// between cases, as `flush_conntrack` does for the kernel's).
pub fn clear_pinned_map(path: &str) -> anyhow::Result<usize> {
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> i64 {
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        }
    }
    let c = std::ffi::CString::new(path).unwrap();
    let mut a = [0u64; 16];
    a[0] = c.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut a);
    if fd < 0 {
        anyhow::bail!("open pinned map {path}: {}", io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_map_info: type, id, key_size, ...
    let mut info = [0u32; 32];
    let mut a = [0u64; 16];
    a[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    a[1] = info.as_mut_ptr() as u64;
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a) < 0 {
        anyhow::bail!("info of map {path}: {}", io::Error::last_os_error());
    }
    let key_size = info[2] as usize;
    let mut key = vec![0u8; key_size];
    let mut n = 0;
    loop {
        // The first key (a NULL key asks for it), deleted, until none.
        let mut a = [0u64; 16];
        a[0] = fd.as_raw_fd() as u64;
        a[1] = 0;
        a[2] = key.as_mut_ptr() as u64;
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut a) < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            anyhow::bail!("iterate map {path}: {e}");
        }
        let mut a = [0u64; 16];
        a[0] = fd.as_raw_fd() as u64;
        a[1] = key.as_ptr() as u64;
        if bpf(BPF_MAP_DELETE_ELEM, &mut a) < 0 {
            anyhow::bail!("delete from map {path}: {}", io::Error::last_os_error());
        }
        n += 1;
        if n > 1 << 20 {
            anyhow::bail!("map {path} does not empty");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_flush_empties_the_table() {
        let ns = crate::unique("ctf");
        let _g = crate::Cleanup::new(&ns);
        let ok = |a: &[&str]| {
            assert!(
                std::process::Command::new("ip")
                    .args(a)
                    .status()
                    .unwrap()
                    .success()
            )
        };
        ok(&["netns", "add", &ns]);
        ok(&["-n", &ns, "link", "set", "lo", "up"]);
        ok(&[
            "netns",
            "exec",
            &ns,
            "nft",
            "add table ip t; add chain ip t c { type filter hook output priority 0; }; add rule ip t c ct state new",
        ]);
        ok(&["netns", "exec", &ns, "ping", "-c1", "-W1", "127.0.0.1"]);
        let n = || {
            crate::stdout(&crate::in_ns(&ns, &["cat", "/proc/net/nf_conntrack"]))
                .lines()
                .count()
        };
        assert!(n() > 0);
        flush_conntrack(&ns).unwrap();
        assert_eq!(n(), 0);
    }
}
