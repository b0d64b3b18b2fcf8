//! `serval-node install-cni`, the DaemonSet's init step: copies serval-cni onto the host,
//! writes the CNI network configuration (from `CNI_NETWORK_CONFIG`, placeholders filled in),
//! a kubeconfig for the plugin from the pod's service account when the datastore is
//! Kubernetes, and turns on IPv4 forwarding — the only steps that need a privileged
//! container, so the long-running agent does not.

use std::path::{Path, PathBuf};

use clap::Args;

/// Where things go (host paths as mounted into the init container).
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Host CNI binary directory.
    #[arg(long, env = "SERVAL_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Host CNI configuration directory.
    #[arg(
        long,
        env = "SERVAL_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub conf_dir: PathBuf,
    /// The plugin binary in the image.
    #[arg(
        long,
        env = "SERVAL_CNI_SOURCE",
        default_value = "/usr/local/bin/serval-cni"
    )]
    pub source: PathBuf,
    /// The conflist template (JSON with __NODENAME__, __DATASTORE_TYPE__, __ETCD_ENDPOINTS__).
    #[arg(long, env = "CNI_NETWORK_CONFIG")]
    pub network_config: String,
    /// Written as `10-serval.conflist`.
    #[arg(
        long,
        env = "SERVAL_CNI_CONF_NAME",
        default_value = "10-serval.conflist"
    )]
    pub conf_name: String,
    /// This node's name.
    #[arg(long, env = "NODENAME")]
    pub node_name: String,
    /// Datastore type for the plugin.
    #[arg(long, env = "DATASTORE_TYPE", default_value = "kubernetes")]
    pub datastore_type: String,
    /// etcd endpoints for the plugin.
    #[arg(long, env = "ETCD_ENDPOINTS", default_value = "")]
    pub etcd_endpoints: String,
    /// The service account directory (token and CA) for the plugin's kubeconfig.
    #[arg(
        long,
        env = "SERVAL_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,
    /// Skip turning on IPv4 forwarding (tests).
    #[arg(long, default_value_t = false)]
    pub no_sysctl: bool,
}

/// Why the installation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we did.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The template is not valid JSON once filled in.
    #[error("CNI_NETWORK_CONFIG is not valid JSON after substitution: {0}")]
    Template(String),
    /// Kubernetes datastore without service-account credentials or API address.
    #[error("cannot build the plugin's kubeconfig: {0}")]
    Kubeconfig(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Writes via a temporary file and a rename, so the runtime never reads half a file. The
/// temporary file is created with `mode` (no window in which a token is world-readable),
/// and synced before it replaces the old one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension(format!("serval-tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    // The umask may have narrowed the mode; make it exact (never wider than asked).
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    f.write_all(contents).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename into", path))
}

/// Seconds since the epoch at which a service-account token (a JWT) expires, if it says.
pub fn token_expiry(token: &str) -> Option<u64> {
    let payload = token.trim().split('.').nth(1)?;
    let json = base64url_decode(payload)?;
    serde_json::from_slice::<serde_json::Value>(&json).ok()?["exp"].as_u64()
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Rewrites the plugin's kubeconfig (mode 0600) when the service-account token or CA has
/// changed: the kubelet rotates the projected token well before it expires, and a copy made
/// once at install would expire with it. Returns whether the file was rewritten.
pub fn refresh_kubeconfig(
    sa_dir: &Path,
    conf_dir: &Path,
    host: &str,
    port: &str,
) -> Result<bool, InstallError> {
    write_kubeconfig_if_changed(conf_dir, &render_kubeconfig(sa_dir, host, port)?)
}

/// Writes the plugin's kubeconfig (0600, atomically) unless it already says `want`.
pub fn write_kubeconfig_if_changed(conf_dir: &Path, want: &str) -> Result<bool, InstallError> {
    let path = conf_dir.join(KUBECONFIG_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|have| have == want) {
        return Ok(false);
    }
    write_atomic(&path, want.as_bytes(), 0o600)?;
    Ok(true)
}

/// The plugin's kubeconfig file name in the CNI configuration directory.
pub const KUBECONFIG_NAME: &str = "serval-kubeconfig";

/// Fills in the template.
pub fn render_network_config(args: &InstallArgs) -> Result<String, InstallError> {
    let text = args
        .network_config
        .replace("__NODENAME__", &args.node_name)
        .replace("__DATASTORE_TYPE__", &args.datastore_type)
        .replace("__ETCD_ENDPOINTS__", &args.etcd_endpoints);
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| InstallError::Template(e.to_string()))?;
    Ok(serde_json::to_string_pretty(&v).expect("JSON value serialises"))
}

/// A kubeconfig for the plugin from the service account and KUBERNETES_SERVICE_HOST/PORT.
pub fn render_kubeconfig(sa_dir: &Path, host: &str, port: &str) -> Result<String, InstallError> {
    let token = std::fs::read_to_string(sa_dir.join("token"))
        .map_err(|e| InstallError::Kubeconfig(format!("service account token: {e}")))?;
    render_kubeconfig_with(sa_dir, token.trim(), host, port)
}

/// A kubeconfig for the plugin with `token` (the CA still from the service account).
pub fn render_kubeconfig_with(
    sa_dir: &Path,
    token: &str,
    host: &str,
    port: &str,
) -> Result<String, InstallError> {
    let ca = std::fs::read(sa_dir.join("ca.crt"))
        .map_err(|e| InstallError::Kubeconfig(format!("service account CA: {e}")))?;
    let ca_b64 = base64_encode(&ca);
    let server = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca_b64}\nusers:\n- name: serval-cni\n  user:\n    token: {}\n\
         contexts:\n- name: serval-cni\n  context:\n    cluster: local\n    user: serval-cni\n\
         current-context: serval-cni\n",
        token.trim()
    ))
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs the installation; returns the files written.
pub fn install(args: &InstallArgs) -> Result<Vec<PathBuf>, InstallError> {
    let mut written = Vec::new();
    std::fs::create_dir_all(&args.bin_dir).map_err(io("create", &args.bin_dir))?;
    std::fs::create_dir_all(&args.conf_dir).map_err(io("create", &args.conf_dir))?;
    let binary = std::fs::read(&args.source).map_err(io("read", &args.source))?;
    let dest = args.bin_dir.join("serval-cni");
    write_atomic(&dest, &binary, 0o755)?;
    written.push(dest);
    if args.datastore_type == "kubernetes" {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| InstallError::Kubeconfig("KUBERNETES_SERVICE_HOST is not set".into()))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        refresh_kubeconfig(&args.service_account_dir, &args.conf_dir, &host, &port)?;
        written.push(args.conf_dir.join(KUBECONFIG_NAME));
    }
    let conf = render_network_config(args)?;
    let path = args.conf_dir.join(&args.conf_name);
    write_atomic(&path, conf.as_bytes(), 0o644)?;
    written.push(path);
    if !args.no_sysctl {
        let p = Path::new("/proc/sys/net/ipv4/ip_forward");
        std::fs::write(p, "1").map_err(io("write", p))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_the_binary_and_a_filled_in_conflist() {
        let dir = std::env::temp_dir().join(format!("serval-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("serval-cni-src");
        std::fs::write(&src, b"#!/bin/sh\n").unwrap();
        let args = InstallArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            source: src,
            network_config: r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"serval-cni","nodename":"__NODENAME__","datastore_type":"__DATASTORE_TYPE__","etcd_endpoints":"__ETCD_ENDPOINTS__","ipam":{"type":"serval-ipam"}}]}"#.into(),
            conf_name: "10-serval.conflist".into(),
            node_name: "node-a".into(),
            datastore_type: "etcdv3".into(),
            etcd_endpoints: "http://10.0.0.1:2379".into(),
            service_account_dir: dir.join("sa"),
            no_sysctl: true,
        };
        let files = install(&args).unwrap();
        assert_eq!(files.len(), 2, "no kubeconfig for etcd");
        let conf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
        let plugin = &conf["plugins"][0];
        assert_eq!(plugin["nodename"], "node-a");
        assert_eq!(plugin["etcd_endpoints"], "http://10.0.0.1:2379");
        // The plugin's own parser accepts it (with the runtime's injected fields).
        let mut single = plugin.clone();
        single["cniVersion"] = conf["cniVersion"].clone();
        single["name"] = conf["name"].clone();
        crate::cni::spec::NetConf::parse(single.to_string().as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let bad = InstallArgs {
            network_config: "{not json".into(),
            ..args
        };
        assert!(matches!(install(&bad), Err(InstallError::Template(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_plugin_kubeconfig_follows_token_rotation_and_is_never_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("serval-kc-{}", std::process::id()));
        let (sa, conf) = (dir.join("sa"), dir.join("net.d"));
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(sa.join("ca.crt"), b"CA").unwrap();
        std::fs::write(sa.join("token"), "first").unwrap();
        assert!(refresh_kubeconfig(&sa, &conf, "10.96.0.1", "443").unwrap());
        assert!(
            !refresh_kubeconfig(&sa, &conf, "10.96.0.1", "443").unwrap(),
            "unchanged"
        );
        // The kubelet rotated the token: the copy follows.
        std::fs::write(sa.join("token"), "second").unwrap();
        assert!(refresh_kubeconfig(&sa, &conf, "10.96.0.1", "443").unwrap());
        let path = conf.join(KUBECONFIG_NAME);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("token: second")
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&conf)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("serval-tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_expiry_is_read_from_the_jwt() {
        // {"alg":"none"} . {"exp":1767225600,"sub":"x"} . (no signature)
        let token = "eyJhbGciOiJub25lIn0.eyJleHAiOjE3NjcyMjU2MDAsInN1YiI6IngifQ.";
        assert_eq!(token_expiry(token), Some(1_767_225_600));
        assert_eq!(token_expiry("not a jwt"), None);
    }

    #[test]
    fn kubeconfig_from_the_service_account() {
        let dir = std::env::temp_dir().join(format!("serval-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "tok123\n").unwrap();
        std::fs::write(dir.join("ca.crt"), b"CA!").unwrap();
        let kc = render_kubeconfig(&dir, "10.96.0.1", "443").unwrap();
        assert!(kc.contains("server: https://10.96.0.1:443"));
        assert!(kc.contains("certificate-authority-data: Q0Eh"));
        assert!(kc.contains("token: tok123\n"));
        assert!(
            render_kubeconfig(&dir, "fd00::1", "6443")
                .unwrap()
                .contains("https://[fd00::1]:6443")
        );
        assert!(render_kubeconfig(&dir.join("missing"), "h", "1").is_err());
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
