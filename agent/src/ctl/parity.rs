//! The Calico parity table in the README, computed from the code: for every Calico kind an
//! operator writes, each field is supported (Serval's CRD has it), supported with a
//! difference (a CEL rule in the CRD limits its values, or a note here says how), refused
//! (Calico has it and Serval's CRD does not, or a CEL rule refuses any value), or a Serval
//! extension. A test holds the README to it (`SERVAL_UPDATE_GOLDEN=1` rewrites it).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::calico::calico_spec_fields;

/// Kinds Calico has and Serval does not (servalctl refuses them as unknown kinds).
const UNSUPPORTED_KINDS: &[(&str, &str)] = &[
    ("Tier", "no: policy order only, one tier"),
    (
        "FelixConfiguration",
        "no: serval-node reads the FELIX_* variables it supports from its environment",
    ),
    (
        "KubeControllersConfiguration",
        "no: the controllers are configured from their environment",
    ),
    ("Profile", "no: namespace labels apply directly"),
    ("StagedNetworkPolicy", "no"),
    ("StagedGlobalNetworkPolicy", "no"),
    ("StagedKubernetesNetworkPolicy", "no"),
    (
        "CalicoNodeStatus",
        "no: `servalctl node status` and `/status`",
    ),
];

/// Calico kinds whose Serval kind has another name.
const RENAMED: &[(&str, &str)] = &[("IPAMConfiguration", "IPAMConfig")];

/// Differences a CRD cannot express, said in words.
const NOTES: &[(&str, &str, &str)] = &[
    (
        "BGPConfiguration",
        "communities",
        "`default` only; pod blocks and service addresses carry them",
    ),
    (
        "BGPConfiguration",
        "prefixAdvertisements",
        "`default` only; pod blocks and service addresses carry them",
    ),
    (
        "BGPConfiguration",
        "serviceClusterIPs",
        "`default` only; Local services' /32s need the Services (Kubernetes datastore, or the controllers' copy in etcd)",
    ),
    (
        "BGPConfiguration",
        "serviceExternalIPs",
        "`default` only; advertised as the range from every node, Local services' IPs as /32 from their endpoints' nodes",
    ),
    (
        "BGPConfiguration",
        "serviceLoadBalancerIPs",
        "`default` only; the range from every node (each address as /32 with serviceLoadBalancerAggregation Disabled), Local services' ingress IPs as /32 from their endpoints' nodes",
    ),
    (
        "BGPPeer",
        "localASNumber",
        "with peerIP only (refused by name on node-to-node peerings, which run with the node's AS)",
    ),
    (
        "BGPFilter",
        "exportV4",
        "evaluated after Serval's own rules (no transit between external peers, service ranges never learned); `setPriority` refused by name (a priority is this node's kernel metric, not sent); `interface` matches a local pod's host interface or the interface towards a learned route's next hop (Serval announces no host-interface routes)",
    ),
    (
        "BGPFilter",
        "importV4",
        "`setPriority` is the kernel metric of the route (Calico's live-migration LOCAL_PREF encoding of priorities between nodes is not done); `interface` is the interface towards the next hop",
    ),
    (
        "BGPConfiguration",
        "ipv4NormalRoutePriority",
        "`default` only; the metric of routes learned over BGP (routes from IPAM, local pods and blocks keep the kernel's default)",
    ),
    (
        "BGPConfiguration",
        "ipv6NormalRoutePriority",
        "as ipv4NormalRoutePriority",
    ),
    ("BGPFilter", "exportV6", "as exportV4"),
    ("BGPFilter", "importV6", "as importV4"),
    (
        "HostEndpoint",
        "interfaceName",
        "required, one named interface (`*` refused); policed by global policies without namespaceSelector, default deny except the failsafe ports (SERVAL_FAILSAFE_INBOUND_HOST_PORTS / FELIX_FAILSAFEINBOUNDHOSTPORTS and the outbound pair); rule selectors do not match host endpoints yet",
    ),
    (
        "IPPool",
        "allowedUses",
        "only the default (Workload and Tunnel); one use alone is refused by name",
    ),
    (
        "BGPConfiguration",
        "logSeverityScreen",
        "the BGP speaker's log level (`default`, or `node.<name>` for one node)",
    ),
    (
        "GlobalNetworkPolicy",
        "applyOnForward",
        "host endpoints' forwarded traffic (FORWARD) is policed by the applyOnForward policies that select them",
    ),
    (
        "GlobalNetworkPolicy",
        "doNotTrack",
        "host endpoints only, in the raw table: allowed packets skip connection tracking, failsafe ports first, no decision falls through to normal policy",
    ),
    (
        "GlobalNetworkPolicy",
        "preDNAT",
        "host endpoints only, ingress, in the mangle table before DNAT; no decision falls through to normal policy",
    ),
];

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Calico's kind.
    pub kind: String,
    /// The `spec` field (empty for a kind-level row).
    pub field: String,
    /// What Serval does with it.
    pub status: String,
}

/// A CRD's `spec` fields and its CEL rules as (field, rule).
type SpecSchema = (BTreeSet<String>, Vec<(String, String)>);

/// The `spec` fields Serval's CRD for `kind` has, and its CEL rules.
fn serval_spec(kind: &str) -> Option<SpecSchema> {
    let crd = crate::resources::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)?;
    let version = crd.spec.versions.first()?;
    let spec = version
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?
        .properties
        .as_ref()?
        .get("spec")?;
    let fields = spec
        .properties
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let rules = spec
        .x_kubernetes_validations
        .iter()
        .flatten()
        .filter_map(|r| {
            let field = r.field_path.as_deref()?.trim_start_matches('.').to_string();
            Some((field, r.rule.clone()))
        })
        .collect();
    Some((fields, rules))
}

/// What a CEL rule on a field means for operators.
fn rule_status(field: &str, rule: &str) -> String {
    match rule.split_once("== '") {
        Some((_, rest)) => {
            let only = rest.trim_end_matches('\'');
            format!("supported, only `{only}` (other values refused by name)")
        }
        None if rule.contains(&format!("!has(self.{field})")) => {
            "refused by name (not supported yet)".to_string()
        }
        None => format!("supported with a rule: `{rule}`"),
    }
}

/// The table's rows, kind by kind, fields in Calico's order then Serval's extensions.
pub fn rows() -> Vec<Row> {
    let mut out = Vec::new();
    let kinds = [
        "BGPConfiguration",
        "BGPPeer",
        "BGPFilter",
        "IPPool",
        "IPReservation",
        "IPAMConfiguration",
        "Node",
        "WorkloadEndpoint",
        "NetworkPolicy",
        "GlobalNetworkPolicy",
        "NetworkSet",
        "GlobalNetworkSet",
        "HostEndpoint",
    ];
    for kind in kinds {
        let serval_kind = RENAMED
            .iter()
            .find(|(c, _)| *c == kind)
            .map_or(kind, |(_, s)| *s);
        let Some((fields, rules)) = serval_spec(serval_kind) else {
            continue;
        };
        if serval_kind != kind {
            out.push(Row {
                kind: kind.into(),
                field: String::new(),
                status: format!("supported as `{serval_kind}`"),
            });
        }
        let calico = calico_spec_fields(kind);
        let extensions = fields.iter().filter(|f| !calico.contains(&f.as_str()));
        for field in calico
            .iter()
            .map(|f| f.to_string())
            .chain(extensions.cloned())
        {
            let rule = rules.iter().find(|(f, _)| *f == field);
            let note = NOTES
                .iter()
                .find(|(k, f, _)| *k == kind && *f == field)
                .map(|(_, _, n)| *n);
            let status = match (calico.contains(&field.as_str()), fields.contains(&field)) {
                (true, false) => "refused by name (not supported yet)".to_string(),
                (false, _) => "Serval extension".to_string(),
                (true, true) => match (rule, note) {
                    (_, Some(n)) => format!("supported, {n}"),
                    (Some((f, r)), None) => rule_status(f, r),
                    (None, None) => "supported".to_string(),
                },
            };
            out.push(Row {
                kind: kind.into(),
                field,
                status,
            });
        }
    }
    for (kind, why) in UNSUPPORTED_KINDS {
        out.push(Row {
            kind: (*kind).into(),
            field: String::new(),
            status: format!("kind refused: {why}"),
        });
    }
    out
}

/// The table as Markdown.
pub fn markdown() -> String {
    let mut s = String::from("| Calico kind | `spec` field | Serval |\n|---|---|---|\n");
    for r in rows() {
        let field = if r.field.is_empty() {
            "(the kind)".to_string()
        } else {
            format!("`{}`", r.field)
        };
        let _ = writeln!(s, "| {} | {field} | {} |", r.kind, r.status);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "<!-- calico-parity:start (generated: SERVAL_UPDATE_GOLDEN=1 cargo test -p serval-agent parity) -->\n";
    const END: &str = "<!-- calico-parity:end -->";

    #[test]
    fn the_readme_table_is_what_the_code_does() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let (before, rest) = readme
            .split_once(START)
            .expect("README has the parity markers");
        let (_, after) = rest.split_once(END).expect("README has the end marker");
        let want = format!("{before}{START}{}{END}{after}", markdown());
        if std::env::var_os("SERVAL_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &want).unwrap();
            return;
        }
        assert!(
            readme == want,
            "the README's Calico parity table is stale; regenerate it with \
             SERVAL_UPDATE_GOLDEN=1 cargo test -p serval-agent parity"
        );
    }

    #[test]
    fn rows_follow_the_crds() {
        let rows = rows();
        let status = |kind: &str, field: &str| {
            rows.iter()
                .find(|r| r.kind == kind && r.field == field)
                .map(|r| r.status.clone())
                .unwrap_or_else(|| panic!("no row for {kind}.{field}"))
        };
        assert_eq!(status("BGPPeer", "peerIP"), "supported");
        assert!(status("BGPPeer", "reversePeering").starts_with("refused"));
        assert!(status("BGPPeer", "localASNumber").starts_with("supported"));
        assert!(status("BGPConfiguration", "bindMode").contains("only `None`"));
        assert_eq!(status("BGPPeer", "maxPrefix"), "Serval extension");
        assert_eq!(status("IPPool", "natOutgoing"), "supported");
        assert!(status("Tier", "").starts_with("kind refused"));
        assert!(status("HostEndpoint", "profiles").starts_with("refused"));
        assert!(status("BGPFilter", "importV4").starts_with("supported"));
        assert_eq!(status("IPAMConfiguration", ""), "supported as `IPAMConfig`");
    }
}
