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
