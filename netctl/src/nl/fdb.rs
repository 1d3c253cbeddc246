use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};

use super::Nl;
use crate::error::Result;
use crate::mac::Mac;
use crate::state::FdbEntry;

impl Nl {
    /// The bridges' forwarding databases (`bridge fdb show`).
    pub async fn fdb(&self) -> Result<Vec<FdbEntry>> {
        let req = self
            .h
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge);
        let msgs = self.collect("dump bridge fdb", req.execute()).await?;
        Ok(msgs.iter().filter_map(decode_fdb).collect())
    }
}

fn decode_fdb(m: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut master = None;
    let mut vlan = None;
    let mut age_s = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            NeighbourAttribute::Controller(c) => master = Some(*c),
            NeighbourAttribute::Vlan(v) => vlan = Some(*v),
            // USER_HZ ticks.
            NeighbourAttribute::CacheInfo(ci) => age_s = Some(ci.updated / 100),
            _ => {}
        }
    }
    let permanent = m.header.state == NeighbourState::Permanent;
    Some(FdbEntry {
        mac: mac?,
        port: m.header.ifindex,
        master,
        vlan,
        permanent,
        age_s: if permanent { None } else { age_s },
    })
}
