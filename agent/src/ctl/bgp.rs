//! `servalctl bgp peers` and `servalctl bgp routes`: the speaker's view in detail, read from
//! the node's local status endpoint (negotiated capabilities, prefix and message counts, and
//! for every candidate route why it is or is not the best).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use serval_bgp::fsm::State;
use serval_bgp::status::Status;

/// Why the local status endpoint gave no answer servalctl can use.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing listens there (or it does not answer in time).
    #[error("cannot reach the status endpoint at {addr}: {source} (is serval-node running?)")]
    Unreachable {
        /// The endpoint.
        addr: SocketAddr,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP, or not a success.
    #[error("{addr}{path}: {status}")]
    Http {
        /// The endpoint.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// The status line and body, or what was wrong with the answer.
        status: String,
    },
    /// The body is not the JSON expected.
    #[error("{addr}{path}: unexpected body: {source}")]
    Body {
        /// The endpoint.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// GETs `path` from the local endpoint and parses the JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, StatusError> {
    let unreachable = |source| StatusError::Unreachable { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(unreachable)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(unreachable)?;
    let http = |status: String| StatusError::Http {
        addr,
        path: path.to_string(),
        status,
    };
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| http("malformed HTTP response".into()))?;
    if !(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")) {
        return Err(http(format!(
            "{} {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        )));
    }
    serde_json::from_str(body).map_err(|source| StatusError::Body {
        addr,
        path: path.to_string(),
        source,
    })
}

/// Every page of a `/routes` query (`path` without `after`/`limit`), as one JSON array.
pub fn get_all_routes(addr: SocketAddr, path: &str) -> Result<Value, StatusError> {
    const PAGE: usize = serval_bgp::status::RoutesQuery::MAX_LIMIT;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut page_path = format!("{path}&limit={PAGE}");
        if let Some(a) = &after {
            page_path.push_str(&format!("&after={a}"));
        }
        let page = get_json(addr, &page_path)?;
        let items = page.as_array().cloned().unwrap_or_default();
        let full = items.len() == PAGE;
        after = items
            .last()
            .and_then(|r| r["prefix"].as_str())
            .map(String::from);
        all.extend(items);
        if !full || after.is_none() {
            return Ok(Value::Array(all));
        }
    }
}

/// One block per peer.
pub fn render_peers(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Router ID {}, AS {}{}",
        status.router_id,
        status.as_number,
        status
            .cluster_id
            .map(|c| format!(", route reflector cluster {c}"))
            .unwrap_or_default()
    );
    for p in &status.peers {
        let _ = writeln!(
            out,
            "\nPeer {} port {} AS {} ({}, {})",
            p.address,
            p.port,
            p.as_number,
            p.kind,
            p.description.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "  state:        {:?} for {}s",
            p.state, p.state_age_seconds
        );
        if let (Some(l), Some(r)) = (&p.local_address, &p.remote_address) {
            let _ = writeln!(out, "  connection:   {l} -> {r}");
        }
        if let Some(n) = &p.negotiated {
            let mut caps = vec![
                format!("hold {}s", n.hold_time),
                format!("keepalive {}s", n.keepalive_time),
            ];
            if n.four_octet_as {
                caps.push("4-octet AS".into());
            }
            if n.route_refresh {
                caps.push("route refresh".into());
            }
            if let Some(gr) = &n.graceful_restart {
                caps.push(format!("graceful restart {}s", gr.restart_time));
            }
            let fams: Vec<String> = n.families.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  negotiated:   {} ; families {}",
                caps.join(", "),
                fams.join(", ")
            );
            let _ = writeln!(out, "  remote ID:    {}", n.remote_id);
        }
        for c in &p.prefixes {
            let _ = writeln!(
                out,
                "  {:<13} received {}, accepted {}, advertised {}",
                format!("{}:", c.family),
                c.received,
                c.accepted,
                c.advertised
            );
        }
        let m = &p.messages;
        let _ = writeln!(
            out,
            "  messages:     UPDATE in {} out {}, NOTIFICATION in {} out {}, malformed UPDATEs {}",
            m.updates_received,
            m.updates_sent,
            m.notifications_received,
            m.notifications_sent,
            m.update_errors
        );
        if let Some(bfd) = p.bfd {
            let _ = writeln!(out, "  BFD:          {bfd:?}");
        }
        if p.max_prefix_exceeded {
            let _ = writeln!(out, "  max-prefix:   limit exceeded");
        }
        if !p.stale_families.is_empty() {
            let f: Vec<String> = p.stale_families.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  graceful restart in progress: stale {}",
                f.join(", ")
            );
        }
        if p.state != State::Established
            && let Some(e) = &p.last_error
        {
            let _ = writeln!(out, "  last error:   {e}");
        }
    }
    if !status.update_groups.is_empty() {
        let _ = writeln!(
            out,
            "\nUpdate groups (one Adj-RIB-Out and UPDATE stream each)"
        );
        for (i, g) in status.update_groups.iter().enumerate() {
            let members: Vec<String> = g.members.iter().map(ToString::to_string).collect();
            let adv: Vec<String> = g
                .advertised
                .iter()
                .map(|(f, n)| format!("{f} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {}: {} ; advertised {}",
                i + 1,
                members.join(", "),
                adv.join(", ")
            );
        }
    }
    out
}

fn as_path(attrs: &Value) -> String {
    let mut out = Vec::new();
    for seg in attrs["asPath"]["segments"].as_array().into_iter().flatten() {
        let asns: Vec<String> = seg["asns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        if seg["kind"] == "set" || seg["kind"] == "confed-set" {
            out.push(format!("{{{}}}", asns.join(",")));
        } else {
            out.extend(asns);
        }
    }
    if out.is_empty() {
        "i".into()
    } else {
        out.join(" ")
    }
}

/// The routes table: every candidate path, best first, with why the others lost.
pub fn render_routes(routes: &Value) -> String {
    let mut rows = vec![
        [
            "PREFIX",
            "FROM",
            "BEST",
            "NEXT HOP",
            "AS PATH",
            "WHY NOT BEST",
        ]
        .map(String::from),
    ];
    for r in routes.as_array().into_iter().flatten() {
        let prefix = r["prefix"].as_str().unwrap_or("").to_string();
        for p in r["paths"].as_array().into_iter().flatten() {
            let from = p["peer"].as_str().unwrap_or("local").to_string();
            let best = if p["best"] == true { "*" } else { "" };
            let stale = if p["stale"] == true { " (stale)" } else { "" };
            let attrs = &p["attributes"];
            let nh = attrs["nextHop"].as_str().unwrap_or("-").to_string();
            let why = p["reason"].as_str().unwrap_or("").to_string();
            rows.push([
                prefix.clone(),
                format!("{from}{stale}"),
                best.into(),
                nh,
                as_path(attrs),
                why,
            ]);
        }
    }
    super::aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_details_show_bfd_max_prefix_and_update_groups() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "routerId": "10.0.0.1", "asNumber": 65000, "clusterId": "244.0.0.1",
            "peers": [{"address":"10.0.0.2","port":179,"asNumber":65000,"kind":"ibgp",
                "description":null,"state":"Established","stateAgeSeconds":5,
                "establishedSinceUnix":null,"localAddress":null,"remoteAddress":null,
                "negotiated":null,"lastError":null,"prefixes":[],
                "messages":{"updatesReceived":0,"updatesSent":0,"notificationsReceived":0,
                    "notificationsSent":0,"messagesReceived":0,"messagesSent":0,"updateErrors":0},
                "establishedTransitions":1,"endOfRibReceived":[],"staleFamilies":[],
                "maxPrefixExceeded":true,"bfd":"Up"}],
            "families": [], "attributeSets": 0,
            "updateGroups": [{"members":["10.0.0.2","10.0.0.3"],"advertised":[["ipv4-unicast",7]]}]
        }))
        .unwrap();
        let text = render_peers(&status);
        assert!(text.contains("  BFD:          Up\n"), "{text}");
        assert!(text.contains("  max-prefix:   limit exceeded\n"), "{text}");
        assert!(
            text.contains("  1: 10.0.0.2, 10.0.0.3 ; advertised ipv4-unicast 7\n"),
            "{text}"
        );
    }

    #[test]
    fn routes_table_says_why_a_path_lost() {
        let routes = serde_json::json!([
            {"prefix": "10.244.1.0/26", "paths": [
                {"peer": "10.0.0.2", "best": true, "stale": false, "lostAt": null, "reason": null,
                 "attributes": {"nextHop": "10.0.0.2", "asPath": {"segments": []}}},
                {"peer": "10.0.0.9", "best": false, "stale": true, "lostAt": "AsPathLength", "reason": "longer AS path",
                 "attributes": {"nextHop": "10.0.0.9", "asPath": {"segments": [{"kind": "sequence", "asns": [65000, 64512]}]}}}
            ]}
        ]);
        assert_eq!(
            render_routes(&routes),
            "PREFIX          FROM               BEST   NEXT HOP   AS PATH       WHY NOT BEST\n\
             10.244.1.0/26   10.0.0.2           *      10.0.0.2   i\n\
             10.244.1.0/26   10.0.0.9 (stale)          10.0.0.9   65000 64512   longer AS path\n"
        );
    }
}
