//! Allocator and GC behaviour over the in-memory store, plus property tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;

use crate::*;

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn pool(name: &str, cidr: &str, block_size: u8) -> Pool {
    Pool {
        name: name.to_string(),
        cidr: cidr.parse().unwrap(),
        block_size,
        node_selector: String::new(),
        disabled: false,
    }
}

fn req(handle: &str, node: &str, v4: usize, v6: usize) -> AssignRequest {
    AssignRequest {
        handle: handle.to_string(),
        node: node.to_string(),
        num_v4: v4,
        num_v6: v6,
        attrs: BTreeMap::new(),
        pools: Vec::new(),
    }
}

fn ipam(pools: Vec<Pool>, nodes: &[&str]) -> Ipam<MemoryStore> {
    Ipam::new(MemoryStore::new(pools, nodes))
}

async fn handles(ipam: &Ipam<MemoryStore>) -> Vec<Handle> {
    let mut hs: Vec<Handle> = ipam
        .store()
        .list::<Handle>()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.value)
        .collect();
    hs.sort_by(|a, b| a.handle_id.cmp(&b.handle_id));
    hs
}

#[test]
fn an_assignment_in_an_existing_block_costs_two_writes_and_no_handle_read() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1"]);
        ipam.auto_assign(&req("h1", "n1", 1, 0)).await.unwrap();
        let (reads0, writes0) = ipam.store().requests();
        ipam.auto_assign(&req("h2", "n1", 1, 0)).await.unwrap();
        let (reads, writes) = ipam.store().requests();
        // The block (compare-and-swap) and the new handle (created without reading it).
        assert_eq!(writes - writes0, 2);
        // The starting reads (handle, node labels, pools, config, reservations, affinities)
        // go out together, then the block itself: nothing else.
        assert_eq!(reads - reads0, 7);
    });
}

#[test]
fn same_handle_gets_the_same_address_back() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1"]);
        let a = ipam.auto_assign(&req("h1", "n1", 1, 0)).await.unwrap();
        let again = ipam.auto_assign(&req("h1", "n1", 1, 0)).await.unwrap();
        assert!(!a.held_before && again.held_before);
        assert_eq!(a.v4, again.v4);
        let b = ipam.auto_assign(&req("h2", "n1", 1, 0)).await.unwrap();
        assert_ne!(a.v4, b.v4);
        assert_eq!(ipam.affine_blocks("n1").await.unwrap().len(), 1);
        let block = ipam.affine_blocks("n1").await.unwrap()[0];
        assert!(block.contains(&a.v4[0]) && block.contains(&b.v4[0]));
        assert_eq!(block.prefix_len(), 26);
    });
}

#[test]
fn nodes_claim_separate_blocks_and_borrow_only_when_allowed() {
    run(async {
        // Two /28 blocks in the pool.
        let ipam = ipam(vec![pool("p", "10.0.0.0/27", 28)], &["a", "b"]);
        let a16 = ipam
            .auto_assign(&AssignRequest {
                num_v4: 16,
                ..req("a-all", "a", 0, 0)
            })
            .await
            .unwrap();
        assert_eq!(a16.v4.len(), 16);
        let b1 = ipam.auto_assign(&req("b1", "b", 1, 0)).await.unwrap();
        let a_block = ipam.affine_blocks("a").await.unwrap();
        let b_block = ipam.affine_blocks("b").await.unwrap();
        assert_eq!(a_block.len(), 1);
        assert_eq!(b_block.len(), 1);
        assert_ne!(a_block, b_block);
        // a is full and no block is left: it borrows from b's block.
        let a17 = ipam.auto_assign(&req("a17", "a", 1, 0)).await.unwrap();
        assert!(b_block[0].contains(&a17.v4[0]));
        assert_ne!(a17.v4, b1.v4);
        assert_eq!(
            ipam.stats()
                .borrowed
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // With strict affinity, no borrowing.
        ipam.store().set_config(IpamConfig {
            strict_affinity: true,
            ..IpamConfig::default()
        });
        let err = ipam.auto_assign(&req("a18", "a", 1, 0)).await.unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
        assert!(err.to_string().contains("strict affinity"));
        assert!(ipam.ips_for_handle("a18", None).await.unwrap().is_empty());
    });
}

#[test]
fn block_cap_limits_claims() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 30)], &["a"]);
        ipam.store().set_config(IpamConfig {
            strict_affinity: true,
            max_blocks_per_host: 2,
            ..IpamConfig::default()
        });
        let got = ipam
            .auto_assign(&AssignRequest {
                num_v4: 8,
                ..req("h", "a", 0, 0)
            })
            .await
            .unwrap();
        assert_eq!(got.v4.len(), 8);
        assert_eq!(ipam.affine_blocks("a").await.unwrap().len(), 2);
        let err = ipam.auto_assign(&req("h2", "a", 1, 0)).await.unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { got: 0, .. }), "{err}");
    });
}

#[test]
fn release_by_handle_and_by_address() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1"]);
        let a = ipam
            .auto_assign(&AssignRequest {
                num_v4: 3,
                ..req("h1", "n1", 0, 0)
            })
            .await
            .unwrap();
        assert_eq!(handles(&ipam).await[0].block.values().sum::<u32>(), 3);
        let released = ipam.release_ips(&a.v4[..1]).await.unwrap();
        assert_eq!(released, a.v4[..1].to_vec());
        assert_eq!(handles(&ipam).await[0].block.values().sum::<u32>(), 2);
        assert!(
            ipam.release_ips(&a.v4[..1]).await.unwrap().is_empty(),
            "idempotent"
        );
        let rest = ipam.release_by_handle("h1").await.unwrap();
        assert_eq!(rest.len(), 2);
        assert!(
            handles(&ipam).await.is_empty(),
            "handle deleted with its last address"
        );
        assert!(ipam.release_by_handle("h1").await.unwrap().is_empty());
        assert!(matches!(
            ipam.release_ips(&["192.0.2.1".parse().unwrap()]).await,
            Err(IpamError::NotInPool(_))
        ));
    });
}

#[test]
fn pool_node_selector_and_disabled_pools() {
    run(async {
        let mut zoned = pool("zone-a", "10.1.0.0/24", 26);
        zoned.node_selector = "zone == 'a'".to_string();
        let mut off = pool("off", "10.2.0.0/24", 26);
        off.disabled = true;
        let ipam = ipam(vec![zoned, off], &["n1", "n2"]);
        ipam.store()
            .set_node("n1", [("zone".to_string(), "a".to_string())].into());
        let got = ipam.auto_assign(&req("h", "n1", 1, 0)).await.unwrap();
        assert!(
            "10.1.0.0/24"
                .parse::<ipnet::IpNet>()
                .unwrap()
                .contains(&got.v4[0])
        );
        let err = ipam.auto_assign(&req("h2", "n2", 1, 0)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("no enabled IPv4 pool selects node \"n2\""),
            "{err}"
        );
        ipam.store().set_pools(vec![Pool {
            node_selector: "zone = 'a'".to_string(),
            ..pool("bad", "10.3.0.0/24", 26)
        }]);
        let err = ipam.auto_assign(&req("h3", "n1", 1, 0)).await.unwrap_err();
        assert!(
            err.to_string().starts_with("pool bad: invalid selector"),
            "{err}"
        );
    });
}

#[test]
fn reserved_addresses_are_skipped() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 29)], &["n1"]);
        ipam.store()
            .set_reservations(vec!["10.0.0.0/30".parse().unwrap()]);
        let mut all = Vec::new();
        for i in 0..8 {
            all.extend(
                ipam.auto_assign(&req(&format!("h{i}"), "n1", 1, 0))
                    .await
                    .unwrap()
                    .v4,
            );
        }
        assert!(
            all.iter()
                .all(|ip| !"10.0.0.0/30".parse::<ipnet::IpNet>().unwrap().contains(ip))
        );
    });
}

#[test]
fn ipv6_and_dual_stack_are_all_or_nothing() {
    run(async {
        let ipam = ipam(
            vec![
                pool("v4", "10.0.0.0/24", 26),
                pool("v6", "fd00:10::/120", 122),
            ],
            &["n1"],
        );
        let got = ipam.auto_assign(&req("h", "n1", 1, 1)).await.unwrap();
        assert!(got.v6[0].is_ipv6());
        assert_eq!(ipam.affine_blocks("n1").await.unwrap().len(), 2);
        ipam.store().set_pools(vec![pool("v4", "10.0.0.0/24", 26)]);
        let err = ipam.auto_assign(&req("h2", "n1", 1, 1)).await.unwrap_err();
        assert!(matches!(
            err,
            IpamError::NoPool {
                family: Family::V6,
                ..
            }
        ));
        assert!(
            ipam.ips_for_handle("h2", None).await.unwrap().is_empty(),
            "IPv4 half released"
        );
    });
}

#[test]
fn tunnel_addresses_come_from_the_pools_once() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1"]);
        let t = ipam
            .assign_tunnel_address("n1", TunnelKind::Ipip)
            .await
            .unwrap();
        assert_eq!(
            ipam.assign_tunnel_address("n1", TunnelKind::Ipip)
                .await
                .unwrap(),
            t
        );
        let h = handles(&ipam).await;
        assert_eq!(h[0].handle_id, "ipip-tunnel-addr-n1");
        let block = ipam.store().list::<Block>().await.unwrap().remove(0).value;
        let (_, _, attr) = block.allocated().next().unwrap();
        assert_eq!(attr.secondary["type"], "ipipTunnelAddress");
        assert_eq!(attr.secondary["node"], "n1");
    });
}

#[test]
fn specific_address_assignment() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1", "n2"]);
        let ip: IpAddr = "10.0.0.77".parse().unwrap();
        ipam.assign_ip(ip, "h", "n1", BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(
            ipam.affine_blocks("n1").await.unwrap()[0].to_string(),
            "10.0.0.64/26"
        );
        let err = ipam
            .assign_ip(ip, "h2", "n2", BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already allocated"), "{err}");
        assert_eq!(ipam.ips_for_handle("h", None).await.unwrap(), vec![ip]);
    });
}

#[test]
fn gc_releases_leaks_and_empty_blocks_and_repairs_handles() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1", "n2"]);
        let mut attrs = BTreeMap::new();
        attrs.insert("namespace".to_string(), "default".to_string());
        attrs.insert("pod".to_string(), "web".to_string());
        let pod = ipam
            .auto_assign(&AssignRequest {
                attrs,
                ..req("pod-handle", "n1", 1, 0)
            })
            .await
            .unwrap();
        let tunnel = ipam
            .assign_tunnel_address("n2", TunnelKind::Vxlan)
            .await
            .unwrap();
        let mut owners = Owners {
            nodes: ["n1".to_string(), "n2".to_string()].into(),
            workloads: [("default".to_string(), "web".to_string())].into(),
        };
        let mut gc = Gc::new(60);
        let r = gc.scan(&ipam, &owners, 0).await.unwrap();
        assert_eq!(r, GcReport::default(), "nothing to do while owners exist");

        // The pod goes away: a leak, released only after the grace period.
        owners.workloads.clear();
        let r = gc.scan(&ipam, &owners, 100).await.unwrap();
        assert_eq!(r.leaks_seen, pod.v4);
        assert!(r.released.is_empty());
        let r = gc.scan(&ipam, &owners, 159).await.unwrap();
        assert!(r.released.is_empty());
        let r = gc.scan(&ipam, &owners, 160).await.unwrap();
        assert_eq!(r.released, pod.v4);
        assert!(
            ipam.ips_for_handle("pod-handle", None)
                .await
                .unwrap()
                .is_empty()
        );

        // n1's block is now empty: its affinity goes after a second empty sighting.
        let r = gc.scan(&ipam, &owners, 161).await.unwrap();
        assert_eq!(r.blocks_released.len(), 1);
        assert!(ipam.affine_blocks("n1").await.unwrap().is_empty());

        // A deleted node's addresses are released at once, and its empty block with them.
        owners.nodes.remove("n2");
        let r = gc.scan(&ipam, &owners, 162).await.unwrap();
        assert_eq!(r.released, vec![tunnel]);
        assert_eq!(r.blocks_released.len(), 1);
        assert!(ipam.store().list::<Block>().await.unwrap().is_empty());
        assert!(
            ipam.store()
                .list::<BlockAffinity>()
                .await
                .unwrap()
                .is_empty()
        );
        assert!(handles(&ipam).await.is_empty());
    });
}

#[test]
fn gc_rebuilds_a_handle_lost_between_block_and_handle_write() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1"]);
        let got = ipam.auto_assign(&req("h", "n1", 2, 0)).await.unwrap();
        // Simulate the crash: the handle write never happened.
        let h = ipam.store().get::<Handle>("h").await.unwrap().unwrap();
        ipam.store()
            .delete::<Handle>("h", &h.revision)
            .await
            .unwrap();
        let owners = Owners {
            nodes: ["n1".to_string()].into(),
            workloads: BTreeSet::new(),
        };
        let mut gc = Gc::new(600);
        assert!(
            gc.scan(&ipam, &owners, 0)
                .await
                .unwrap()
                .handles_repaired
                .is_empty()
        );
        let r = gc.scan(&ipam, &owners, 1).await.unwrap();
        assert_eq!(r.handles_repaired, vec!["h".to_string()]);
        let mut released = ipam.release_by_handle("h").await.unwrap();
        released.sort();
        let mut want = got.v4.clone();
        want.sort();
        assert_eq!(
            released, want,
            "release by handle works again after the repair"
        );
    });
}

#[test]
fn gc_finishes_or_removes_abandoned_claims() {
    run(async {
        let ipam = ipam(vec![pool("p", "10.0.0.0/24", 26)], &["n1"]);
        let cidr: ipnet::IpNet = "10.0.0.0/26".parse().unwrap();
        ipam.store()
            .create(&BlockAffinity {
                state: AffinityState::Pending,
                node: "n1".to_string(),
                cidr,
            })
            .await
            .unwrap();
        let owners = Owners {
            nodes: ["n1".to_string()].into(),
            workloads: BTreeSet::new(),
        };
        let mut gc = Gc::new(600);
        assert!(
            gc.scan(&ipam, &owners, 0)
                .await
                .unwrap()
                .affinities_removed
                .is_empty()
        );
        let r = gc.scan(&ipam, &owners, 1).await.unwrap();
        assert_eq!(r.affinities_removed, vec!["n1/10.0.0.0/26".to_string()]);
    });
}

/// One step of a random workload on three nodes.
#[derive(Debug, Clone)]
enum Op {
    Assign { handle: u8, node: u8, v6: bool },
    ReleaseHandle(u8),
    ReleaseFirstIp(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..24, 0u8..3, any::<bool>()).prop_map(|(handle, node, v6)| Op::Assign { handle, node, v6 }),
        1 => (0u8..24).prop_map(Op::ReleaseHandle),
        1 => (0u8..24).prop_map(Op::ReleaseFirstIp),
    ]
}

async fn all_allocations(ipam: &Ipam<MemoryStore>) -> Vec<(IpAddr, String)> {
    let mut out = Vec::new();
    for b in ipam.store().list::<Block>().await.unwrap() {
        for (_, ip, attr) in b.value.allocated() {
            out.push((ip, attr.handle_id.clone().unwrap()));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_address_is_handed_out_twice(ops in proptest::collection::vec(op(), 1..80)) {
        run(async {
            // Small pools (four /29 blocks each) so blocks fill, nodes borrow, and pools run out.
            let ipam = ipam(
                vec![pool("v4", "10.0.0.0/27", 29), pool("v6", "fd00::/123", 125)],
                &["n0", "n1", "n2"],
            );
            let mut model: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Assign { handle, node, v6 } => {
                        let h = format!("h{handle}");
                        let r = req(&h, &format!("n{node}"), usize::from(!v6), usize::from(v6));
                        match ipam.auto_assign(&r).await {
                            Ok(got) => {
                                let ip = got.v4.into_iter().chain(got.v6).next().unwrap();
                                let cidr: ipnet::IpNet = if v6 { "fd00::/123" } else { "10.0.0.0/27" }.parse().unwrap();
                                assert!(cidr.contains(&ip));
                                for (other, ips) in &model {
                                    assert!(other == &h || !ips.contains(&ip), "{ip} given to {h} and {other}");
                                }
                                model.entry(h).or_default().insert(ip);
                            }
                            Err(IpamError::Exhausted { .. }) => {
                                let family = if v6 { Family::V6 } else { Family::V4 };
                                let used = model.values().flatten().filter(|ip| (ip.is_ipv4()) == (family == Family::V4)).count();
                                assert_eq!(used, 32, "exhausted only when the pool is full");
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::ReleaseHandle(handle) => {
                        let h = format!("h{handle}");
                        let released: BTreeSet<IpAddr> = ipam.release_by_handle(&h).await.unwrap().into_iter().collect();
                        assert_eq!(released, model.remove(&h).unwrap_or_default());
                    }
                    Op::ReleaseFirstIp(handle) => {
                        let h = format!("h{handle}");
                        if let Some(ip) = model.get(&h).and_then(|s| s.iter().next().copied()) {
                            assert_eq!(ipam.release_ips(&[ip]).await.unwrap(), vec![ip]);
                            let set = model.get_mut(&h).unwrap();
                            set.remove(&ip);
                            if set.is_empty() { model.remove(&h); }
                        }
                    }
                }
                // The store agrees with the model, and handles agree with blocks.
                let mut stored: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
                for (ip, h) in all_allocations(&ipam).await {
                    assert!(stored.entry(h).or_default().insert(ip));
                }
                assert_eq!(stored, model);
                for h in handles(&ipam).await {
                    let n: u32 = h.block.values().sum();
                    assert_eq!(n as usize, model[&h.handle_id].len());
                }
            }
            for h in model.keys().cloned().collect::<Vec<_>>() {
                ipam.release_by_handle(&h).await.unwrap();
            }
            assert!(all_allocations(&ipam).await.is_empty(), "no leaks after releasing everything");
            assert!(handles(&ipam).await.is_empty());
        });
    }

    #[test]
    fn release_then_allocate_round_trips(n in 1usize..64) {
        run(async {
            let ipam = ipam(vec![pool("p", "10.9.0.0/26", 26)], &["n"]);
            let first = ipam.auto_assign(&AssignRequest { num_v4: n, ..req("h", "n", 0, 0) }).await.unwrap();
            assert_eq!(ipam.release_by_handle("h").await.unwrap().len(), n);
            let again = ipam.auto_assign(&AssignRequest { num_v4: 64, ..req("h2", "n", 0, 0) }).await.unwrap();
            let all: BTreeSet<IpAddr> = again.v4.into_iter().collect();
            assert_eq!(all.len(), 64, "the whole block is usable again");
            assert!(first.v4.iter().all(|ip| all.contains(ip)));
        });
    }
}
