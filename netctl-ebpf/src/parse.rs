//! Packet headers and bounds-checked access to them.
//!
//! Headers are read in place (direct packet access): every access goes
//! through [`ptr_at`], which checks the bound right before it, as the
//! verifier wants. Fields are byte arrays, so the structs have alignment 1
//! and any offset in the packet is a valid place for them.

use aya_ebpf::programs::TcContext;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
/// `ETH_P_IP`: the ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

/// An IPv4 header without options (IHL 5).
#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

const _: () = assert!(size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(size_of::<Ipv4Hdr>() == IPV4_HLEN);

/// A `T` at `offset` in the packet, if it lies wholly in the linear data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Makes the first `len` bytes of the packet directly accessible: when they
/// are not all in the linear data (a header split into a fragment), pulls
/// them in. Every packet pointer taken before is invalid afterwards.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, len: usize) -> bool {
    if ctx.data() + len <= ctx.data_end() {
        return true;
    }
    len <= ctx.len() as usize && ctx.pull_data(len as u32).is_ok()
}

/// Bit 0 of the first octet: group (multicast or broadcast) address.
#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// A MAC as an integer, so comparisons compile to one compare rather than a
/// call to `bcmp`, which eBPF does not have.
#[inline(always)]
pub fn mac_u64(mac: &[u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// IPv4 "more fragments" flag and fragment offset.
const IP_MF_OFFSET: u16 = 0x3fff;

/// Options (IHL other than 5), another version, or a fragment: the kernel's
/// business, not the fast path's.
#[inline(always)]
pub fn ipv4_is_plain(ver_ihl: u8, frag_off: [u8; 2]) -> bool {
    ver_ihl == 0x45 && u16::from_be_bytes(frag_off) & IP_MF_OFFSET == 0
}

/// The IPv4 header checksum after the TTL drops by one (RFC 1624, eqn. 3:
/// `HC' = ~(~HC + ~m + m')` over the 16-bit word holding TTL and protocol).
#[inline(always)]
pub fn csum_after_ttl_dec(check: [u8; 2], ttl: u8, protocol: u8) -> [u8; 2] {
    let hc = u16::from_be_bytes(check);
    let old = u16::from_be_bytes([ttl, protocol]);
    let new = u16::from_be_bytes([ttl.wrapping_sub(1), protocol]);
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
