//! serval-node's configuration as an operator coming from Calico meets it: Calico's and
//! Felix's variable names are read as ours, a conflict or a bad value names the variable the
//! operator set, and one that means nothing here is named in a warning. The binary is run
//! for real; every case stops at validation, before it touches the host.

use std::process::Command;

use serval_integration::require;

/// Runs `serval-node run` with only `vars` in its environment; (success, stderr).
fn run(vars: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(require::serval_bin("serval-node"))
        .arg("run")
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("serval-node runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn calico_names_are_read_and_errors_name_what_the_operator_set() {
    // A bad value under Calico's name: refused, naming Calico's variable.
    let (ok, err) = run(&[("CALICO_NETWORKING_BACKEND", "calico")]);
    assert!(!ok);
    assert!(
        err.contains("CALICO_NETWORKING_BACKEND") && err.contains("expected bird, vxlan or none"),
        "{err}"
    );
    // Calico's name and ours disagreeing: refused, naming both.
    let (ok, err) = run(&[
        ("CALICO_IPV4POOL_CIDR", "10.1.0.0/16"),
        ("SERVAL_IPV4POOL_CIDR", "10.2.0.0/16"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("CALICO_IPV4POOL_CIDR") && err.contains("SERVAL_IPV4POOL_CIDR"),
        "{err}"
    );
    // A value clap refuses (not a number) still names Calico's variable.
    let (ok, err) = run(&[("FELIX_VXLANVNI", "many")]);
    assert!(!ok);
    assert!(err.contains("FELIX_VXLANVNI"), "{err}");
    // A variable with no meaning here is named in a warning (the run then stops at the
    // datastore check: etcd settings with the Kubernetes datastore).
    let (ok, err) = run(&[
        ("FELIX_DEFAULTENDPOINTTOHOSTACTION", "ACCEPT"),
        ("CALICO_IPV6POOL_IPIP", "Always"),
        ("CALICO_IPV6POOL_CIDR", "fd00::/48"),
        ("CALICO_IPV4POOL_CIDR", "10.1.0.0/16"),
        ("ETCD_ENDPOINTS", "http://127.0.0.1:1"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("FELIX_DEFAULTENDPOINTTOHOSTACTION")
            && err.contains("variable=CALICO_IPV6POOL_IPIP")
            && err.contains("not supported"),
        "{err}"
    );
    // Both pool families' CIDRs are read (IPv6 ones are used once IP6 is set).
    assert!(!err.contains("variable=CALICO_IPV4POOL_CIDR"), "{err}");
    assert!(!err.contains("variable=CALICO_IPV6POOL_CIDR"), "{err}");
    assert!(err.contains("ETCD_ENDPOINTS"), "{err}");
}
