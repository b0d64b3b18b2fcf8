//! `servalctl ipam show | check | release`: pool and block utilisation, a read-only
//! consistency check (leaked addresses, handle records that disagree with the blocks, blocks
//! of vanished nodes, affinities without blocks), and releasing one address by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use serval_ipam::Ipam;

use super::CtlError;
use crate::datastore::{AnyBackend, Datastore};
use crate::resources::{BlockAffinity, IPAMBlock, IPAMHandle, IPPool, Node, WorkloadEndpoint};

type Ds = Datastore<AnyBackend>;

fn size(net: &IpNet) -> u128 {
    1u128 << (u32::from(net.max_prefix_len() - net.prefix_len())).min(127)
}

fn pct(used: u128, total: u128) -> String {
    if total == 0 {
        return "0%".into();
    }
    format!("{:.0}%", used as f64 * 100.0 / total as f64)
}

/// Utilisation per pool (and per block with `blocks`).
pub async fn show(ds: &Ds, blocks: bool) -> Result<String, CtlError> {
    let (pools, _) = ds.list::<IPPool>(None).await?;
    let (all_blocks, _) = ds.list::<IPAMBlock>(None).await?;
    let mut rows = vec![
        ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
            .map(String::from)
            .to_vec(),
    ];
    for p in &pools {
        let Some(cidr) = p.spec.cidr_net() else {
            continue;
        };
        let mut in_use = 0u128;
        let mut pool_rows = Vec::new();
        for b in all_blocks
            .iter()
            .filter(|b| cidr.contains(&b.spec.inner.cidr))
        {
            let used = b
                .spec
                .inner
                .allocations
                .iter()
                .filter(|a| a.is_some())
                .count() as u128;
            in_use += used;
            let total = size(&b.spec.inner.cidr);
            pool_rows.push(vec![
                format!(
                    "Block {}",
                    b.spec.inner.affinity.as_deref().unwrap_or("(unaffine)")
                ),
                b.spec.inner.cidr.to_string(),
                total.to_string(),
                format!("{used} ({})", pct(used, total)),
                format!("{} ({})", total - used, pct(total - used, total)),
            ]);
        }
        let total = size(&cidr);
        rows.push(vec![
            format!("IP Pool {}", p.name_any()),
            cidr.to_string(),
            total.to_string(),
            format!("{in_use} ({})", pct(in_use, total)),
            format!("{} ({})", total - in_use, pct(total - in_use, total)),
        ]);
        if blocks {
            rows.extend(pool_rows);
        }
    }
    Ok(super::aligned(&rows))
}

/// The problems `check` finds (empty: consistent).
pub async fn check(ds: &Ds) -> Result<Vec<String>, CtlError> {
    let (blocks, _) = ds.list::<IPAMBlock>(None).await?;
    let (handles, _) = ds.list::<IPAMHandle>(None).await?;
    let (affinities, _) = ds.list::<BlockAffinity>(None).await?;
    // With the Kubernetes datastore the owners are what the controllers' collector uses
    // (Kubernetes Nodes and Pods), so both report the same leaks; in etcd, Serval Nodes and
    // WorkloadEndpoints.
    let (node_names, workloads, owner) = match ds.backend() {
        AnyBackend::Kubernetes(_) => (
            crate::controllers::live_nodes(ds).await?,
            crate::controllers::live_pods(ds).await?,
            "Pod",
        ),
        _ => {
            let (nodes, _) = ds.list::<Node>(None).await?;
            let (weps, _) = ds.list::<WorkloadEndpoint>(None).await?;
            let workloads: BTreeSet<(String, String)> = weps
                .iter()
                .map(|w| (w.namespace().unwrap_or_default(), w.spec.pod.clone()))
                .collect();
            (
                nodes.iter().map(|n| n.name_any()).collect(),
                workloads,
                "WorkloadEndpoint",
            )
        }
    };
    let mut problems = Vec::new();
    let mut counted: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for b in &blocks {
        let block = &b.spec.inner;
        if let Some(node) = block
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
            && !node_names.contains(node)
        {
            problems.push(format!(
                "block {} is affine to node {node:?}, which does not exist",
                block.cidr
            ));
        }
        for (ordinal, attr) in block.allocations.iter().enumerate() {
            let Some(i) = attr else { continue };
            let Some(a) = block.attributes.get(*i as usize) else {
                problems.push(format!(
                    "block {}: ordinal {ordinal} points at missing attribute {i}",
                    block.cidr
                ));
                continue;
            };
            let ip = nth(&block.cidr, ordinal as u128);
            if let Some(h) = &a.handle_id {
                *counted
                    .entry(h.clone())
                    .or_default()
                    .entry(block.cidr.to_string())
                    .or_default() += 1;
            }
            let attr = |k: &str| a.secondary.get(k).cloned();
            if let Some(node) = attr("node")
                && !node_names.contains(&node)
            {
                problems.push(format!(
                    "{ip} is allocated to node {node:?}, which does not exist (leak)"
                ));
            }
            if let (Some(ns), Some(pod)) = (attr("namespace"), attr("pod"))
                && !workloads.contains(&(ns.clone(), pod.clone()))
            {
                problems.push(format!(
                    "{ip} is allocated to pod {ns}/{pod}, which has no {owner} (leak)"
                ));
            }
        }
    }
    let stored: BTreeMap<String, BTreeMap<String, u32>> = handles
        .iter()
        .filter(|h| !h.spec.inner.deleted)
        .map(|h| (h.spec.inner.handle_id.clone(), h.spec.inner.block.clone()))
        .collect();
    for (h, per_block) in &counted {
        match stored.get(h) {
            None => problems.push(format!(
                "handle {h:?} holds addresses in {per_block:?} but has no IPAMHandle record"
            )),
            Some(s) if s != per_block => problems.push(format!(
                "handle {h:?} record says {s:?}, the blocks say {per_block:?}"
            )),
            _ => {}
        }
    }
    for (h, s) in &stored {
        if !counted.contains_key(h) && s.values().any(|n| *n > 0) {
            problems.push(format!(
                "handle {h:?} record says {s:?} but no block holds its addresses"
            ));
        }
    }
    let block_cidrs: BTreeSet<IpNet> = blocks.iter().map(|b| b.spec.inner.cidr).collect();
    for a in &affinities {
        let aff = &a.spec.inner;
        if aff.state == serval_ipam::AffinityState::Confirmed && !block_cidrs.contains(&aff.cidr) {
            problems.push(format!(
                "affinity {} of node {} has no block",
                aff.cidr, aff.node
            ));
        }
        if !node_names.contains(&aff.node) {
            problems.push(format!(
                "affinity {} belongs to node {:?}, which does not exist",
                aff.cidr, aff.node
            ));
        }
    }
    Ok(problems)
}

fn nth(net: &IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::from(std::net::Ipv4Addr::from(
            u32::from(v4.network()).wrapping_add(n as u32),
        )),
        IpNet::V6(v6) => IpAddr::from(std::net::Ipv6Addr::from(
            u128::from(v6.network()).wrapping_add(n),
        )),
    }
}

/// Releases addresses; returns those that were allocated.
pub async fn release(ds: &Ds, ips: &[IpAddr]) -> Result<Vec<IpAddr>, CtlError> {
    Ipam::new(ds.clone())
        .release_ips(ips)
        .await
        .map_err(|e| CtlError::Datastore(crate::datastore::DatastoreError::backend(e)))
}
