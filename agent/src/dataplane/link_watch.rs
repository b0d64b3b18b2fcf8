//! Notices a host interface's carrier coming back, so routes the kernel flushed while it was
//! down are rewritten at once instead of at the next periodic resync (Felix watches links
//! the same way). The decision is pure; a thin task feeds it netlink link events.

use std::collections::BTreeMap;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use tokio::sync::mpsc;

use super::DataplaneError;
use super::route_manager::RouteCommand;

/// Remembers each interface's carrier and says when one comes up.
#[derive(Debug, Default)]
pub struct CarrierTracker {
    running: BTreeMap<u32, bool>,
}

impl CarrierTracker {
    /// Takes one link event; true when a non-pod interface went from no carrier (or unseen
    /// and down) to carrier: the moment the kernel's routes through it need writing again.
    pub fn came_up(&mut self, index: u32, name: &str, running: bool) -> bool {
        let before = self.running.insert(index, running);
        // Pod veths come and go with pods; their routes are written by CNI and the agent.
        let pod = name.starts_with("sv");
        running && !pod && before.is_some_and(|was| !was)
    }

    /// Forgets a deleted interface.
    pub fn removed(&mut self, index: u32) {
        self.running.remove(&index);
    }
}

fn name_of(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Watches link events in this namespace and asks the route task for a resync whenever a
/// host interface's carrier comes back. Ends when the route task is gone.
pub async fn run(routes: mpsc::Sender<RouteCommand>) -> Result<(), DataplaneError> {
    let (conn, _handle, mut events) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(DataplaneError::Socket)?;
    tokio::spawn(conn);
    let mut tracker = CarrierTracker::default();
    while let Some((msg, _)) = events.next().await {
        let NetlinkPayload::InnerMessage(inner) = msg.payload else {
            continue;
        };
        match inner {
            RouteNetlinkMessage::NewLink(l) => {
                let name = name_of(&l);
                let running = l.header.flags.contains(LinkFlags::Running);
                if tracker.came_up(l.header.index, &name, running) {
                    tracing::info!(interface = %name, "carrier back; rewriting routes");
                    if routes.send(RouteCommand::Resync).await.is_err() {
                        return Ok(());
                    }
                }
            }
            RouteNetlinkMessage::DelLink(l) => tracker.removed(l.header.index),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_interface_coming_back_counts() {
        let mut t = CarrierTracker::default();
        assert!(!t.came_up(2, "eth1", true), "first sight of an up link");
        assert!(!t.came_up(2, "eth1", true), "no change");
        assert!(!t.came_up(2, "eth1", false), "going down");
        assert!(t.came_up(2, "eth1", true), "carrier back");
        assert!(!t.came_up(9, "sv0123456789a", false));
        assert!(
            !t.came_up(9, "sv0123456789a", true),
            "pod veths do not count"
        );
        t.removed(2);
        assert!(
            !t.came_up(2, "eth1", true),
            "a new link with a reused index"
        );
    }
}
