use std::os::fd::AsRawFd;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};

use super::Nl;
use crate::error::{Error, Result, from_rtnl};

impl Nl {
    /// The id under which this namespace knows `other` (RTM_GETNSID), as
    /// used in IFLA_LINK_NETNSID; `None` when it has not assigned one.
    pub async fn nsid_of(&self, other: &std::fs::File) -> Result<Option<i32>> {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(other.as_raw_fd() as u32)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut resp = self
            .h
            .clone()
            .request(req)
            .map_err(|e| Error::Invalid(format!("netlink request: {e}")))?;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(from_rtnl(
                        self.ctx("get nsid"),
                        rtnetlink::Error::NetlinkError(e),
                    ));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    for a in m.attributes {
                        if let NsidAttribute::Id(id) = a {
                            return Ok((id >= 0).then_some(id));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}
