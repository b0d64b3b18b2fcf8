//! `serval-node status`: the peer table Calico users know from `calicoctl node status`,
//! read from the local status endpoint.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serval_bgp::fsm::State;
use serval_bgp::status::{PeerStatus, Status};

/// `/status` as a node serves it: the speaker's snapshot, plus (on serval-node) what the
/// dataplane reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The speaker's peers and tables.
    #[serde(flatten)]
    pub bgp: Status,
    /// The dataplane's report (absent on the standalone speaker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneStatus>,
}

/// What the node's dataplane wants an operator to know.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneStatus {
    /// Destinations whose learned route is not installed because another owner's route
    /// (another protocol, same destination and metric) holds them.
    pub route_conflicts: Vec<IpNet>,
}

/// Fetches `/status` from a local speaker or agent.
pub fn fetch(addr: SocketAddr) -> Result<NodeStatus, crate::ctl::bgp::StatusError> {
    let body = crate::ctl::bgp::get_json(addr, "/status")?;
    serde_json::from_value(body).map_err(|source| crate::ctl::bgp::StatusError::Body {
        addr,
        path: "/status".into(),
        source,
    })
}

/// The peer tables, then anything the dataplane reports.
pub fn render_node(status: &NodeStatus, now_unix: u64) -> String {
    let mut out = render(&status.bgp, now_unix);
    if let Some(d) = status
        .dataplane
        .as_ref()
        .filter(|d| !d.route_conflicts.is_empty())
    {
        out.push_str(
            "Routes left to another owner (same destination and metric; not installed):\n",
        );
        for dst in &d.route_conflicts {
            out.push_str(&format!("  {dst}\n"));
        }
        out.push('\n');
    }
    out
}

fn hms(now_unix: u64, ago: u64) -> String {
    let t = now_unix.saturating_sub(ago) % 86_400;
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

fn row(p: &PeerStatus, now_unix: u64) -> [String; 5] {
    let kind = p.description.clone().unwrap_or_else(|| p.kind.to_string());
    let state = if p.state == State::Established {
        "up"
    } else {
        "start"
    };
    let mut info = format!("{:?}", p.state);
    if let Some(e) = &p.last_error {
        info.push_str(&format!(" ({e})"));
    }
    if let Some(bfd) = p.bfd {
        info.push_str(&format!(", BFD {bfd:?}"));
    }
    [
        p.address.to_string(),
        kind,
        state.to_string(),
        hms(now_unix, p.state_age_seconds),
        info,
    ]
}

/// Renders the IPv4 and IPv6 peer tables.
pub fn render(status: &Status, now_unix: u64) -> String {
    let mut out = String::new();
    for (title, v6) in [("IPv4 BGP status", false), ("IPv6 BGP status", true)] {
        let rows: Vec<[String; 5]> = status
            .peers
            .iter()
            .filter(|p| matches!(p.address, IpAddr::V6(_)) == v6)
            .map(|p| row(p, now_unix))
            .collect();
        out.push_str(title);
        out.push('\n');
        if rows.is_empty() {
            out.push_str(&format!(
                "No IPv{} peers found.\n\n",
                if v6 { 6 } else { 4 }
            ));
            continue;
        }
        let header = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"].map(String::from);
        let widths: Vec<usize> = (0..5)
            .map(|i| {
                rows.iter()
                    .chain([&header])
                    .map(|r| r[i].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = format!(
            "+{}+\n",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        );
        let fmt = |r: &[String; 5]| {
            format!(
                "|{}|\n",
                r.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!(" {c:<w$} "))
                    .collect::<Vec<_>>()
                    .join("|")
            )
        };
        out.push_str(&line);
        out.push_str(&fmt(&header));
        out.push_str(&line);
        rows.iter().for_each(|r| out.push_str(&fmt(r)));
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_table() {
        let status: Status = serde_json::from_str(
            r#"{"routerId":"10.0.0.1","asNumber":64512,"clusterId":null,"attributeSets":1,
            "families":[],
            "peers":[
              {"address":"10.0.0.2","port":179,"asNumber":64512,"kind":"ibgp","description":"node-mesh","state":"Established","stateAgeSeconds":60,
               "establishedSinceUnix":null,"localAddress":null,"remoteAddress":null,"negotiated":null,"lastError":null,"prefixes":[],
               "messages":{"updatesReceived":0,"updatesSent":0,"notificationsReceived":0,"notificationsSent":0,"messagesReceived":0,"messagesSent":0,"updateErrors":0},
               "establishedTransitions":1},
              {"address":"10.0.0.9","port":179,"asNumber":65000,"kind":"ebgp","description":null,"state":"Active","stateAgeSeconds":5,
               "establishedSinceUnix":null,"localAddress":null,"remoteAddress":null,"negotiated":null,"lastError":"connection lost","prefixes":[],
               "messages":{"updatesReceived":0,"updatesSent":0,"notificationsReceived":0,"notificationsSent":0,"messagesReceived":0,"messagesSent":0,"updateErrors":0},
               "establishedTransitions":0}
            ]}"#,
        )
        .unwrap();
        let got = render(&status, 3600 * 10 + 65);
        let want = "IPv4 BGP status
+--------------+-----------+-------+----------+--------------------------+
| PEER ADDRESS | PEER TYPE | STATE | SINCE    | INFO                     |
+--------------+-----------+-------+----------+--------------------------+
| 10.0.0.2     | node-mesh | up    | 10:00:05 | Established              |
| 10.0.0.9     | ebgp      | start | 10:01:00 | Active (connection lost) |
+--------------+-----------+-------+----------+--------------------------+

IPv6 BGP status
No IPv6 peers found.

";
        assert_eq!(got, want);
    }

    #[test]
    fn node_status_lists_routes_left_to_other_owners() {
        let node: NodeStatus = serde_json::from_str(
            r#"{"routerId":"10.0.0.1","asNumber":64512,"clusterId":null,"attributeSets":0,
            "families":[],"peers":[],"dataplane":{"routeConflicts":["10.97.0.0/24"]}}"#,
        )
        .unwrap();
        let got = render_node(&node, 0);
        assert!(
            got.ends_with(
                "Routes left to another owner (same destination and metric; not installed):\n  10.97.0.0/24\n\n"
            ),
            "{got}"
        );
        // The standalone speaker has no dataplane section, and nothing is printed for it.
        let bare: NodeStatus = serde_json::from_str(
            r#"{"routerId":"10.0.0.1","asNumber":64512,"clusterId":null,"attributeSets":0,"families":[],"peers":[]}"#,
        )
        .unwrap();
        assert!(!render_node(&bare, 0).contains("another owner"));
    }
}
