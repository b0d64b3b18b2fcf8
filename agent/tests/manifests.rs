//! The manifests: every object parses into its Kubernetes (k8s-openapi) or Serval type with
//! no field lost or misspelled (a round trip must give back the same object), Serval objects
//! validate, every env var the pods set is one the binaries read, every ConfigMap key they
//! reference exists, and the CNI configuration template is one serval-cni accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn manifests() -> Vec<(String, Vec<Value>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                docs.into_iter().filter(|d| !d.is_null()).collect(),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 7,
        "manifests found: {:?}",
        out.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    out
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: {} {} changed in a round trip (a misspelled or unknown field?)",
        doc["kind"], doc["metadata"]["name"]
    );
    typed
}

fn env_vars_read() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = [
        "SERVAL_LOG",
        "SERVAL_LOG_FORMAT",
        "SERVAL_IPTABLES_BACKEND",
        "KUBECONFIG",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    #[derive(clap::Parser)]
    struct Run {
        #[command(flatten)]
        run: serval_agent::node::config::RunArgs,
    }
    #[derive(clap::Parser)]
    struct Install {
        #[command(flatten)]
        install: serval_agent::node::install_cni::InstallArgs,
    }
    #[derive(clap::Parser)]
    struct Controllers {
        #[command(flatten)]
        controllers: serval_agent::controllers::ControllerArgs,
    }
    for cmd in [Run::command(), Install::command(), Controllers::command()] {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                known.insert(e.to_string_lossy().into_owned());
            }
        }
    }
    known
}

#[test]
fn every_manifest_object_deserializes_into_its_type_and_validates() {
    let mut kinds = BTreeMap::new();
    let mut daemonsets = Vec::new();
    let mut configmaps = Vec::new();
    let mut secret_role = false;
    for (file, docs) in manifests() {
        for doc in docs {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no kind"))
                .to_string();
            let api = doc["apiVersion"].as_str().unwrap_or("").to_string();
            *kinds.entry(kind.clone()).or_insert(0) += 1;
            match (api.as_str(), kind.as_str()) {
                ("v1", "ServiceAccount") => drop(round_trip::<ServiceAccount>(&file, &doc)),
                ("v1", "ConfigMap") => {
                    configmaps.push((file.clone(), round_trip::<ConfigMap>(&file, &doc)))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    let role = round_trip::<ClusterRole>(&file, &doc);
                    for rule in role.rules.iter().flatten() {
                        assert!(
                            !rule
                                .resources
                                .iter()
                                .flatten()
                                .any(|r| r == "secrets" || r == "*"),
                            "{file}: no cluster-wide access to Secrets"
                        );
                    }
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    drop(round_trip::<ClusterRoleBinding>(&file, &doc))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => {
                    let role = round_trip::<Role>(&file, &doc);
                    // Secrets only by name, only in serval-node's namespace.
                    for rule in role.rules.iter().flatten() {
                        if rule.resources.iter().flatten().any(|r| r == "secrets") {
                            assert_eq!(rule.verbs, ["get"], "{file}: secrets are only read");
                            assert!(
                                rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                                "{file}: Secrets only by name (resourceNames), never all of them"
                            );
                            secret_role = true;
                        }
                    }
                }
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    drop(round_trip::<RoleBinding>(&file, &doc))
                }
                ("apps/v1", "DaemonSet") => {
                    daemonsets.push((file.clone(), round_trip::<DaemonSet>(&file, &doc)))
                }
                ("apps/v1", "Deployment") => {
                    let d = round_trip::<k8s_openapi::api::apps::v1::Deployment>(&file, &doc);
                    let pod = d.spec.template.spec.unwrap();
                    let known = env_vars_read();
                    for c in &pod.containers {
                        let sc = c.security_context.as_ref().unwrap();
                        assert_eq!(sc.allow_privilege_escalation, Some(false), "{file}");
                        assert_eq!(sc.run_as_non_root, Some(true), "{file}");
                        for e in c.env.iter().flatten() {
                            assert!(
                                known.contains(&e.name),
                                "{file}: {} is read by nothing",
                                e.name
                            );
                        }
                    }
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    drop(round_trip::<CustomResourceDefinition>(&file, &doc))
                }
                ("serval.dev/v1", k) => {
                    let kind = serval_agent::ctl::kinds::lookup(k)
                        .unwrap_or_else(|| panic!("{file}: kind {k}"));
                    (kind.check)(&doc).unwrap_or_else(|e| panic!("{file}: {k}: {e}"));
                }
                other => panic!("{file}: no test for {other:?}"),
            }
        }
    }
    assert!(
        secret_role,
        "a Role lets serval-node read BGP password Secrets"
    );
    for want in [
        "DaemonSet",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "ConfigMap",
        "CustomResourceDefinition",
        "IPPool",
        "BGPConfiguration",
        "BGPPeer",
    ] {
        assert!(
            kinds.contains_key(want),
            "no {want} in the manifests: {kinds:?}"
        );
    }

    // Env vars and ConfigMap keys.
    let known = env_vars_read();
    let mut cm_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, cm) in &configmaps {
        cm_keys
            .entry(file.clone())
            .or_default()
            .extend(cm.data.clone().unwrap_or_default().into_keys());
    }
    assert!(
        daemonsets.len() >= 3,
        "serval-node, route reflector, etcd variant"
    );
    for (file, ds) in &daemonsets {
        let pod = ds.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true), "{file}");
        let all = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        for c in all {
            for e in c.env.iter().flatten() {
                assert!(
                    known.contains(&e.name),
                    "{file}: container {} sets {} which nothing reads",
                    c.name,
                    e.name
                );
                if let Some(r) = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.config_map_key_ref.as_ref())
                {
                    // The etcd variant carries its own ConfigMap; the others use serval-config.yaml.
                    let source = if cm_keys.contains_key(file) {
                        file.as_str()
                    } else {
                        "serval-config.yaml"
                    };
                    assert!(
                        cm_keys.get(source).is_some_and(|k| k.contains(&r.key)),
                        "{file}: {} refers to ConfigMap key {} that {source} lacks",
                        e.name,
                        r.key
                    );
                }
            }
        }
        let agent = pod
            .containers
            .iter()
            .find(|c| c.name.starts_with("serval"))
            .unwrap();
        let sc = agent.security_context.as_ref().unwrap();
        assert_eq!(
            sc.privileged,
            Some(false),
            "{file}: the agent runs unprivileged"
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{file}");
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{file}"
        );
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{file}"
        );
        let mut added = caps.add.clone().unwrap_or_default();
        added.sort();
        assert_eq!(
            added,
            ["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"],
            "{file}"
        );
        let status_env = agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SERVAL_HTTP_ADDRESS")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        assert!(
            status_env.starts_with("127.0.0.1:"),
            "{file}: the status API stays on loopback"
        );
        assert!(
            agent.liveness_probe.is_some() && agent.readiness_probe.is_some(),
            "{file}"
        );
        assert!(
            agent
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some(),
            "{file}"
        );
        assert!(
            pod.tolerations.as_ref().is_some_and(|t| !t.is_empty()),
            "{file}"
        );
    }

    // The CNI template, filled in as install-cni does, is a configuration serval-cni accepts.
    for (file, cm) in &configmaps {
        let tpl = &cm.data.as_ref().unwrap()["cni_network_config"];
        let filled = tpl
            .replace("__NODENAME__", "node-a")
            .replace("__DATASTORE_TYPE__", "etcdv3")
            .replace("__ETCD_ENDPOINTS__", "http://10.0.0.10:2379");
        let list: Value = serde_json::from_str(&filled).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        serval_agent::cni::spec::NetConf::parse(plugin.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn the_dockerfile_builds_the_three_binaries_in_stages() {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
            .unwrap();
    assert_eq!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")),
        2,
        "two stages"
    );
    for bin in ["serval-node", "serval-cni", "servalctl"] {
        assert!(
            text.contains(&format!("/src/target/release/{bin}")),
            "{bin}"
        );
    }
    assert!(
        text.contains("iptables") && text.contains("ipset"),
        "runtime tools"
    );
}
