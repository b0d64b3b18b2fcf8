//! Prometheus metrics rendered from a speaker status snapshot at scrape time, so the
//! numbers are never stale and the speaker task keeps no metric state of its own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serval_bgp::fsm::State;
use serval_bgp::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    peer_asn: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerFamilyLabels {
    peer: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: String,
}

/// BGP4-MIB's numbering of peer states (idle=1 … established=6).
pub fn state_number(s: State) -> i64 {
    match s {
        State::Idle => 1,
        State::Connect => 2,
        State::Active => 3,
        State::OpenSent => 4,
        State::OpenConfirm => 5,
        State::Established => 6,
    }
}

fn gauge<
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
>(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge> {
    let f = Family::<L, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<PeerLabels, Counter> {
    let f = Family::<PeerLabels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

/// Renders the OpenMetrics text for one snapshot.
pub fn render(status: &Status) -> String {
    render_with(status, None)
}

/// Renders the speaker's snapshot plus, for the node agent, its own metrics.
pub fn render_with(status: &Status, node: Option<&crate::node_metrics::NodeMetrics>) -> String {
    let mut reg = Registry::default();
    if let Some(n) = node {
        n.register(&mut reg);
    }
    let state = gauge::<PeerLabels>(
        &mut reg,
        "serval_bgp_peer_state",
        "BGP FSM state of the peer (BGP4-MIB numbering: 1 idle .. 6 established)",
    );
    let up = gauge::<PeerLabels>(
        &mut reg,
        "serval_bgp_peer_established",
        "1 when the session is established",
    );
    let uptime = gauge::<PeerLabels>(
        &mut reg,
        "serval_bgp_peer_uptime_seconds",
        "Seconds since the session was established (0 when down)",
    );
    let flaps = counter(
        &mut reg,
        "serval_bgp_peer_established_transitions",
        "Times the session reached Established",
    );
    let upd_in = counter(
        &mut reg,
        "serval_bgp_updates_received",
        "UPDATE messages received",
    );
    let upd_out = counter(&mut reg, "serval_bgp_updates_sent", "UPDATE messages sent");
    let notif_in = counter(
        &mut reg,
        "serval_bgp_notifications_received",
        "NOTIFICATION messages received",
    );
    let notif_out = counter(
        &mut reg,
        "serval_bgp_notifications_sent",
        "NOTIFICATION messages sent",
    );
    let upd_err = counter(
        &mut reg,
        "serval_bgp_update_errors",
        "UPDATEs with malformed attributes handled per RFC 7606",
    );
    let received = gauge::<PeerFamilyLabels>(
        &mut reg,
        "serval_bgp_prefixes_received",
        "Prefixes the peer announces to us",
    );
    let accepted = gauge::<PeerFamilyLabels>(
        &mut reg,
        "serval_bgp_prefixes_accepted",
        "Prefixes from the peer that passed import",
    );
    let advertised = gauge::<PeerFamilyLabels>(
        &mut reg,
        "serval_bgp_prefixes_advertised",
        "Prefixes we advertise to the peer",
    );
    let loc_rib = gauge::<FamilyLabels>(
        &mut reg,
        "serval_bgp_loc_rib_prefixes",
        "Prefixes with a best path in the Loc-RIB",
    );
    let attr_sets = Gauge::<i64>::default();
    reg.register(
        "serval_bgp_attribute_sets",
        "Distinct path attribute sets held",
        attr_sets.clone(),
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for p in &status.peers {
        let l = PeerLabels {
            peer: p.address.to_string(),
            peer_asn: p.as_number.to_string(),
        };
        state.get_or_create(&l).set(state_number(p.state));
        up.get_or_create(&l)
            .set(i64::from(p.state == State::Established));
        uptime.get_or_create(&l).set(
            p.established_since_unix
                .map(|s| now.saturating_sub(s) as i64)
                .unwrap_or(0),
        );
        flaps.get_or_create(&l).inc_by(p.established_transitions);
        upd_in.get_or_create(&l).inc_by(p.messages.updates_received);
        upd_out.get_or_create(&l).inc_by(p.messages.updates_sent);
        notif_in
            .get_or_create(&l)
            .inc_by(p.messages.notifications_received);
        notif_out
            .get_or_create(&l)
            .inc_by(p.messages.notifications_sent);
        upd_err.get_or_create(&l).inc_by(p.messages.update_errors);
        for c in &p.prefixes {
            let fl = PeerFamilyLabels {
                peer: p.address.to_string(),
                family: c.family.to_string(),
            };
            received.get_or_create(&fl).set(c.received as i64);
            accepted.get_or_create(&fl).set(c.accepted as i64);
            advertised.get_or_create(&fl).set(c.advertised as i64);
        }
    }
    for f in &status.families {
        loc_rib
            .get_or_create(&FamilyLabels {
                family: f.family.to_string(),
            })
            .set(f.prefixes as i64);
    }
    attr_sets.set(status.attribute_sets as i64);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
