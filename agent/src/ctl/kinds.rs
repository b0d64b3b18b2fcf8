//! The kinds servalctl knows: names and aliases as calicoctl accepts them, the typed
//! operations behind each, and the table columns calicoctl prints.

use futures::future::BoxFuture;
use kube::ResourceExt;
use serde_json::Value;

use super::CtlError;
use crate::datastore::{AnyBackend, Datastore, DatastoreError};
use crate::resources::{
    BGPConfiguration, BGPFilter, BGPPeer, BlockAffinity, GlobalNetworkPolicy, GlobalNetworkSet,
    HostEndpoint, IPAMBlock, IPAMConfig, IPAMHandle, IPPool, IPReservation, NetworkPolicy,
    NetworkSet, Node, ServalResource, WorkloadEndpoint,
};

type Ds = Datastore<AnyBackend>;
type Fut<'a, T> = BoxFuture<'a, Result<T, CtlError>>;
/// Create and/or update (flags: may create, may update); says what happened.
type ApplyFn = for<'a> fn(&'a Ds, Value, bool, bool) -> Fut<'a, &'static str>;
/// Delete by namespace and name.
type DeleteFn = for<'a> fn(&'a Ds, Option<String>, String) -> Fut<'a, ()>;
/// List in a namespace, or all.
type ListFn = for<'a> fn(&'a Ds, Option<String>) -> Fut<'a, Vec<Value>>;

/// One kind and its operations.
#[derive(Clone, Copy)]
pub struct Kind {
    /// The kind's name (`IPPool`).
    pub name: &'static str,
    /// Other names accepted (plural, short name, lower case).
    pub aliases: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Default table columns: header and JSON pointer.
    pub columns: &'static [(&'static str, &'static str)],
    /// `-o wide` columns.
    pub wide_columns: &'static [(&'static str, &'static str)],
    /// Deserialises and validates an object.
    pub check: fn(&Value) -> Result<(), CheckError>,
    /// Parses one YAML document as this kind and, if that fails, says where (line, column).
    pub locate: fn(&str) -> Option<(usize, usize)>,
    /// Creates and/or updates (flags: may create, may update); returns what happened.
    pub apply: ApplyFn,
    /// Deletes by namespace and name.
    pub delete: DeleteFn,
    /// Lists (in a namespace, or all).
    pub list: ListFn,
}

/// Why an object is not a valid resource of its kind.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// It does not have the kind's shape: the field path (`.` for the top) and the problem.
    #[error("{}{message}", if path == "." { String::new() } else { format!("{path}: ") })]
    Shape {
        /// Where, as `spec.peerIP`.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// It has the shape but breaks a rule of the kind.
    #[error(transparent)]
    Invalid(#[from] crate::resources::ValidationError),
}

fn check<R: ServalResource>(v: &Value) -> Result<(), CheckError> {
    let r: R = serde_path_to_error::deserialize(v.clone()).map_err(|e| CheckError::Shape {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    Ok(r.validate()?)
}

fn locate<R: ServalResource>(doc: &str) -> Option<(usize, usize)> {
    let e = serde_saphyr::from_str::<R>(doc).err()?.to_string();
    // "line L column C: ..." is how serde-saphyr starts its messages.
    let rest = e.split("line ").nth(1)?;
    let (line, rest) = rest.split_once(" column ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

fn apply<'a, R: ServalResource>(
    ds: &'a Ds,
    v: Value,
    create_ok: bool,
    update_ok: bool,
) -> BoxFuture<'a, Result<&'static str, CtlError>> {
    Box::pin(async move {
        let mut r: R = serde_json::from_value(v).map_err(DatastoreError::backend)?;
        let ns = r.namespace();
        let name = r.name_any();
        match ds.get::<R>(ns.as_deref(), &name).await? {
            None if create_ok => {
                r.meta_mut().resource_version = None;
                ds.create(&r).await?;
                Ok("created")
            }
            Some(current) if update_ok => {
                let mut cmp = current.clone();
                cmp.meta_mut().resource_version = None;
                r.meta_mut().resource_version = None;
                if serde_json::to_value(&cmp).ok() == serde_json::to_value(&r).ok() {
                    return Ok("unchanged");
                }
                r.meta_mut().resource_version = current.resource_version();
                ds.update(&r).await?;
                Ok("configured")
            }
            None => Err(DatastoreError::NotFound {
                kind: R::kind(&()).into_owned(),
                name,
            }
            .into()),
            Some(_) => Err(DatastoreError::AlreadyExists {
                kind: R::kind(&()).into_owned(),
                name,
            }
            .into()),
        }
    })
}

fn delete<'a, R: ServalResource>(
    ds: &'a Ds,
    ns: Option<String>,
    name: String,
) -> BoxFuture<'a, Result<(), CtlError>> {
    Box::pin(async move { Ok(ds.delete::<R>(ns.as_deref(), &name, None).await?) })
}

fn list<'a, R: ServalResource>(
    ds: &'a Ds,
    ns: Option<String>,
) -> BoxFuture<'a, Result<Vec<Value>, CtlError>> {
    Box::pin(async move {
        let (items, _) = ds.list::<R>(ns.as_deref()).await?;
        let mut out: Vec<Value> = items
            .iter()
            .map(|i| serde_json::to_value(i).expect("resources serialise"))
            .collect();
        out.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    v["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    v["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(out)
    })
}

macro_rules! kind {
    ($t:ty, $name:expr, [$($alias:expr),*], $cols:expr, $wide:expr) => {
        Kind {
            name: $name,
            aliases: &[$($alias),*],
            namespaced: <$t as ServalResource>::NAMESPACED,
            columns: $cols,
            wide_columns: $wide,
            check: check::<$t>,
            locate: locate::<$t>,
            apply: apply::<$t>,
            delete: delete::<$t>,
            list: list::<$t>,
        }
    };
}

/// Every kind servalctl handles.
pub fn all() -> Vec<Kind> {
    vec![
        kind!(
            IPPool,
            "IPPool",
            ["ippool", "ippools", "pool", "pools"],
            &[("CIDR", "/spec/cidr"), ("SELECTOR", "/spec/nodeSelector")],
            &[
                ("CIDR", "/spec/cidr"),
                ("NAT", "/spec/natOutgoing"),
                ("IPIPMODE", "/spec/ipipMode"),
                ("VXLANMODE", "/spec/vxlanMode"),
                ("DISABLED", "/spec/disabled"),
                ("DISABLEBGPEXPORT", "/spec/disableBGPExport"),
                ("SELECTOR", "/spec/nodeSelector")
            ]
        ),
        kind!(
            BGPPeer,
            "BGPPeer",
            ["bgppeer", "bgppeers", "bgpp", "peer", "peers"],
            &[
                ("PEERIP", "/spec/peerIP"),
                ("NODE", "/spec/node"),
                ("ASN", "/spec/asNumber")
            ],
            &[
                ("PEERIP", "/spec/peerIP"),
                ("NODE", "/spec/node"),
                ("NODESELECTOR", "/spec/nodeSelector"),
                ("PEERSELECTOR", "/spec/peerSelector"),
                ("ASN", "/spec/asNumber")
            ]
        ),
        kind!(
            HostEndpoint,
            "HostEndpoint",
            ["hostendpoint", "hostendpoints", "hep", "heps"],
            &[("NODE", "/spec/node"), ("INTERFACE", "/spec/interfaceName")],
            &[("NODE", "/spec/node"), ("INTERFACE", "/spec/interfaceName")]
        ),
        kind!(
            BGPFilter,
            "BGPFilter",
            ["bgpfilter", "bgpfilters"],
            &[],
            &[]
        ),
        kind!(
            BGPConfiguration,
            "BGPConfiguration",
            [
                "bgpconfiguration",
                "bgpconfigurations",
                "bgpconfig",
                "bgpconfigs"
            ],
            &[
                ("LOGSEVERITY", "/spec/logSeverityScreen"),
                ("MESHENABLED", "/spec/nodeToNodeMeshEnabled"),
                ("ASNUMBER", "/spec/asNumber")
            ],
            &[
                ("LOGSEVERITY", "/spec/logSeverityScreen"),
                ("MESHENABLED", "/spec/nodeToNodeMeshEnabled"),
                ("ASNUMBER", "/spec/asNumber"),
                ("LISTENPORT", "/spec/listenPort")
            ]
        ),
        kind!(
            Node,
            "Node",
            ["node", "nodes", "svnode"],
            &[],
            &[
                ("ASN", "/spec/bgp/asNumber"),
                ("IPV4", "/spec/bgp/ipv4Address"),
                ("IPV6", "/spec/bgp/ipv6Address")
            ]
        ),
        kind!(
            WorkloadEndpoint,
            "WorkloadEndpoint",
            ["workloadendpoint", "workloadendpoints", "wep", "weps"],
            &[
                ("WORKLOAD", "/spec/pod"),
                ("NODE", "/spec/node"),
                ("NETWORKS", "/spec/ipNetworks"),
                ("INTERFACE", "/spec/interfaceName")
            ],
            &[
                ("WORKLOAD", "/spec/pod"),
                ("NODE", "/spec/node"),
                ("NETWORKS", "/spec/ipNetworks"),
                ("INTERFACE", "/spec/interfaceName"),
                ("MAC", "/spec/mac")
            ]
        ),
        kind!(
            NetworkPolicy,
            "NetworkPolicy",
            [
                "networkpolicy",
                "networkpolicies",
                "policy",
                "policies",
                "netpol"
            ],
            &[("ORDER", "/spec/order"), ("SELECTOR", "/spec/selector")],
            &[
                ("ORDER", "/spec/order"),
                ("SELECTOR", "/spec/selector"),
                ("TYPES", "/spec/types")
            ]
        ),
        kind!(
            GlobalNetworkPolicy,
            "GlobalNetworkPolicy",
            ["globalnetworkpolicy", "globalnetworkpolicies", "gnp"],
            &[("ORDER", "/spec/order"), ("SELECTOR", "/spec/selector")],
            &[
                ("ORDER", "/spec/order"),
                ("SELECTOR", "/spec/selector"),
                ("TYPES", "/spec/types")
            ]
        ),
        kind!(
            NetworkSet,
            "NetworkSet",
            ["networkset", "networksets", "netsets"],
            &[("NETS", "/spec/nets")],
            &[("NETS", "/spec/nets")]
        ),
        kind!(
            GlobalNetworkSet,
            "GlobalNetworkSet",
            ["globalnetworkset", "globalnetworksets"],
            &[("NETS", "/spec/nets")],
            &[("NETS", "/spec/nets")]
        ),
        kind!(
            IPReservation,
            "IPReservation",
            ["ipreservation", "ipreservations"],
            &[("CIDRS", "/spec/reservedCIDRs")],
            &[("CIDRS", "/spec/reservedCIDRs")]
        ),
        kind!(
            IPAMConfig,
            "IPAMConfig",
            ["ipamconfig", "ipamconfigs", "ipamconfiguration"],
            &[
                ("STRICTAFFINITY", "/spec/strictAffinity"),
                ("MAXBLOCKSPERHOST", "/spec/maxBlocksPerHost")
            ],
            &[
                ("STRICTAFFINITY", "/spec/strictAffinity"),
                ("MAXBLOCKSPERHOST", "/spec/maxBlocksPerHost"),
                ("AUTOALLOCATEBLOCKS", "/spec/autoAllocateBlocks")
            ]
        ),
        kind!(
            IPAMBlock,
            "IPAMBlock",
            ["ipamblock", "ipamblocks"],
            &[("CIDR", "/spec/cidr"), ("AFFINITY", "/spec/affinity")],
            &[("CIDR", "/spec/cidr"), ("AFFINITY", "/spec/affinity")]
        ),
        kind!(
            BlockAffinity,
            "BlockAffinity",
            ["blockaffinity", "blockaffinities"],
            &[
                ("NODE", "/spec/node"),
                ("CIDR", "/spec/cidr"),
                ("STATE", "/spec/state")
            ],
            &[
                ("NODE", "/spec/node"),
                ("CIDR", "/spec/cidr"),
                ("STATE", "/spec/state")
            ]
        ),
        kind!(
            IPAMHandle,
            "IPAMHandle",
            ["ipamhandle", "ipamhandles"],
            &[("HANDLE", "/spec/handleID")],
            &[("HANDLE", "/spec/handleID"), ("BLOCKS", "/spec/block")]
        ),
    ]
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Finds a kind by name or alias (case-insensitive).
pub fn lookup(name: &str) -> Option<Kind> {
    let lower = name.to_ascii_lowercase();
    all()
        .into_iter()
        .find(|k| k.name.eq_ignore_ascii_case(name) || k.aliases.contains(&lower.as_str()))
}

/// The kind names, for error messages.
pub fn names() -> String {
    all().iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}
