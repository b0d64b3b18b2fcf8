//! servalctl against a real etcd: apply → get (table, wide, yaml, json) → re-apply (unchanged)
//! → change (configured) → delete; bad files are refused whole, naming file, document and field.

use std::process::Command;

use serval_integration::{EtcdServer, require};

fn servalctl(etcd: &EtcdServer, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(require::serval_bin("servalctl"))
        .args(args)
        .env("DATASTORE_TYPE", "etcdv3")
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .output()
        .expect("run servalctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apply_get_change_delete_round_trip() {
    let Some(etcd) = EtcdServer::start("servalctl_round_trip") else {
        return;
    };
    let dir = serval_integration::peers::Scratch::new("ctl");
    let file = dir.path("res.yaml");
    std::fs::write(
        &file,
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: pods}\n\
         spec: {cidr: 10.244.0.0/16, vxlanMode: CrossSubnet, natOutgoing: true}\n---\n\
         apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\n\
         spec: {peerIP: 10.0.0.1, asNumber: 65000}\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, out, err) = servalctl(&etcd, &["apply", "-f", &f]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "IPPool \"pods\" created\nBGPPeer \"tor\" created\n");

    let (_, table, _) = servalctl(&etcd, &["get", "ippools"]);
    assert_eq!(
        table,
        "NAME   CIDR            SELECTOR\npods   10.244.0.0/16\n"
    );
    let (_, wide, _) = servalctl(&etcd, &["get", "ippool", "-o", "wide"]);
    assert!(
        wide.contains("pods   10.244.0.0/16   true   Never      CrossSubnet"),
        "{wide}"
    );
    let (_, yaml, _) = servalctl(&etcd, &["get", "bgppeer", "tor", "-o", "yaml"]);
    assert!(
        yaml.contains("peerIP: \"10.0.0.1\"") && yaml.contains("kind: BGPPeer"),
        "{yaml}"
    );
    let (_, json, _) = servalctl(&etcd, &["get", "bgppeers", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["spec"]["asNumber"], 65000);

    let (_, out, _) = servalctl(&etcd, &["apply", "-f", &f]);
    assert_eq!(
        out,
        "IPPool \"pods\" unchanged\nBGPPeer \"tor\" unchanged\n"
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("65000", "65001"),
    )
    .unwrap();
    let (_, out, _) = servalctl(&etcd, &["apply", "-f", &f]);
    assert_eq!(
        out,
        "IPPool \"pods\" unchanged\nBGPPeer \"tor\" configured\n"
    );
    let (code, _, err) = servalctl(&etcd, &["create", "-f", &f]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    let (code, out, _) = servalctl(&etcd, &["delete", "bgppeer", "tor"]);
    assert_eq!((code, out.as_str()), (0, "BGPPeer \"tor\" deleted\n"));
    let (code, _, err) = servalctl(&etcd, &["get", "bgppeer", "tor"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn calico_yaml_applies_unchanged_and_calico_only_fields_are_named() {
    let Some(etcd) = EtcdServer::start("servalctl_calico_yaml") else {
        return;
    };
    let dir = serval_integration::peers::Scratch::new("ctl-calico");
    let file = dir.path("calico.yaml");
    std::fs::write(
        &file,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: default-ipv4-ippool}\n\
         spec: {cidr: 192.168.0.0/16, ipipMode: Never, vxlanMode: CrossSubnet, natOutgoing: true, nodeSelector: all()}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\n\
         spec: {peerIP: 10.0.0.1, asNumber: 65000}\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, out, err) = servalctl(&etcd, &["apply", "-f", &f]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "IPPool \"default-ipv4-ippool\" created\nBGPPeer \"tor\" created\n"
    );
    let (_, yaml, _) = servalctl(&etcd, &["get", "bgppeer", "tor", "-o", "yaml"]);
    assert!(yaml.contains("apiVersion: serval.dev/v1"), "{yaml}");
    // A field Calico has and Serval does not: refused by name, nothing written.
    std::fs::write(
        &file,
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: rr}\n\
         spec: {peerSelector: rr == 'true', reversePeering: Manual}\n",
    )
    .unwrap();
    let (code, _, err) = servalctl(&etcd, &["apply", "-f", &f]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Calico's BGPPeer field \"reversePeering\" is not supported by Serval yet"),
        "{err}"
    );
    let (_, peers, _) = servalctl(&etcd, &["get", "bgppeers", "-o", "json"]);
    assert!(!peers.contains("\"rr\""), "{peers}");
}

#[test]
fn bad_files_are_refused_whole_with_file_document_and_field() {
    let Some(etcd) = EtcdServer::start("servalctl_bad_input") else {
        return;
    };
    let dir = serval_integration::peers::Scratch::new("ctlbad");
    let file = dir.path("bad.yaml");
    // The first document is fine, the second is not: nothing may be written.
    std::fs::write(
        &file,
        "kind: IPPool\nmetadata: {name: ok}\nspec: {cidr: 10.1.0.0/16}\n---\n\
         kind: IPPool\nmetadata: {name: broken}\nspec: {cidr: 10.2.0.0/16, blockSize: 40}\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, _, err) = servalctl(&etcd, &["apply", "-f", &f]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("{f}: document 2 (IPPool)")), "{err}");
    assert!(err.contains("spec.blockSize"), "{err}");
    let (_, table, _) = servalctl(&etcd, &["get", "ippools"]);
    assert_eq!(table.lines().count(), 1, "nothing written: {table}");
    let (code, _, err) = servalctl(&etcd, &["validate", "-f", &f]);
    assert_ne!(code, 0);
    assert!(err.contains("spec.blockSize"), "{err}");
    let (code, _, err) = servalctl(&etcd, &["get", "frobs"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown resource kind \"frobs\""), "{err}");
}

#[test]
fn patch_and_label_change_one_field_and_keep_the_rest() {
    let Some(etcd) = EtcdServer::start("servalctl_patch_label") else {
        return;
    };
    let dir = serval_integration::peers::Scratch::new("ctlpatch");
    let file = dir.path("pool.yaml");
    std::fs::write(
        &file,
        "kind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true}\n",
    )
    .unwrap();
    assert_eq!(
        servalctl(&etcd, &["apply", "-f", &file.display().to_string()]).0,
        0
    );
    let (code, out, err) = servalctl(
        &etcd,
        &[
            "patch",
            "ippool",
            "pods",
            "-p",
            r#"{"spec":{"vxlanMode":"Always","natOutgoing":null}}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "IPPool \"pods\" patched\n");
    let (_, json, _) = servalctl(&etcd, &["get", "ippool", "pods", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["spec"]["vxlanMode"], "Always");
    assert_eq!(v[0]["spec"]["cidr"], "10.244.0.0/16");
    assert!(v[0]["spec"].get("natOutgoing").is_none_or(|n| n == false));
    // An invalid patch is refused with the field, and nothing changes.
    let (code, _, err) = servalctl(
        &etcd,
        &[
            "patch",
            "ippool",
            "pods",
            "-p",
            r#"{"spec":{"blockSize":99}}"#,
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("spec.blockSize"), "{err}");
    // Labels.
    let (code, _, err) = servalctl(&etcd, &["label", "ippool", "pods", "zone=a", "rack=r1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = servalctl(&etcd, &["label", "ippool", "pods", "zone=b"]);
    assert_ne!(code, 0);
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(
        servalctl(
            &etcd,
            &["label", "ippool", "pods", "zone=b", "--overwrite", "rack-"]
        )
        .0,
        0
    );
    let (_, json, _) = servalctl(&etcd, &["get", "ippool", "pods", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["metadata"]["labels"], serde_json::json!({"zone": "b"}));
    assert_eq!(
        v[0]["spec"]["vxlanMode"], "Always",
        "labels did not touch the spec"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_show_check_and_release() {
    use serval_agent::datastore::{Datastore, EtcdBackend};
    let Some(etcd) = EtcdServer::start("servalctl_ipam") else {
        return;
    };
    let ds = Datastore::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    serval_integration::ipam_load::setup(&ds, "10.60.0.0/24", 26, &["node-a".to_string()], 0).await;
    let ipam = serval_ipam::Ipam::new(ds.clone());
    let got = ipam
        .auto_assign(&serval_ipam::AssignRequest {
            handle: "k8s-pod-network.gone".into(),
            node: "node-a".into(),
            num_v4: 2,
            attrs: [
                ("namespace".to_string(), "prod".to_string()),
                ("pod".to_string(), "gone".to_string()),
                ("node".to_string(), "node-a".to_string()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (code, out, err) = servalctl(&etcd, &["ipam", "show", "--show-blocks"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("GROUPING"), "{out}");
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = out.lines().map(words).collect();
    assert_eq!(lines[0], "GROUPING CIDR IPS TOTAL IPS IN USE IPS FREE");
    assert_eq!(lines[1], "IP Pool load 10.60.0.0/24 256 2 (1%) 254 (99%)");
    assert!(out.contains("Block host:node-a"), "{out}");
    // Two addresses of a pod that has no WorkloadEndpoint: leaks, reported, exit 1.
    let (code, out, _) = servalctl(&etcd, &["ipam", "check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{} is allocated to pod prod/gone", got.v4[0])),
        "{out}"
    );
    assert!(out.contains("2 problem(s) found"), "{out}");
    let args: Vec<String> = got
        .v4
        .iter()
        .flat_map(|ip| ["--ip".to_string(), ip.to_string()])
        .collect();
    let mut all = vec!["ipam", "release"];
    all.extend(args.iter().map(String::as_str));
    let (code, out, err) = servalctl(&etcd, &all);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("released {}", got.v4[0])), "{out}");
    let (code, out, _) = servalctl(&etcd, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 problem(s) found"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_and_serval_network_policies_of_one_name_live_side_by_side() {
    let Some(etcd) = EtcdServer::start("servalctl_policy_keyspaces") else {
        return;
    };
    // A Kubernetes NetworkPolicy copied into etcd (as the controllers do in etcd mode)...
    let ds = serval_agent::datastore::Datastore::new(
        serval_agent::datastore::EtcdBackend::connect(&[etcd.endpoint()])
            .await
            .unwrap(),
    );
    let knp: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();
    ds.create(&knp).await.unwrap();
    // ...does not stop a Serval policy of the same name, nor listing them (before, both
    // shared one keyspace: "does not decode: unknown field podSelector").
    let dir = serval_integration::peers::Scratch::new("ctl-np");
    let file = dir.path("np.yaml");
    std::fs::write(
        &file,
        "apiVersion: serval.dev/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: prod}\n\
         spec: {selector: all(), types: [Ingress]}\n",
    )
    .unwrap();
    let (code, out, err) = servalctl(&etcd, &["apply", "-f", &file.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = servalctl(&etcd, &["get", "networkpolicies", "-n", "prod"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web"), "{out}");
    let back: Option<k8s_openapi::api::networking::v1::NetworkPolicy> =
        ds.get(Some("prod"), "web").await.unwrap();
    assert!(back.is_some(), "the Kubernetes policy is still there");
}
