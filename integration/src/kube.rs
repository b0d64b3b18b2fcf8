//! A real Kubernetes control plane for tests: its own etcd, the kube-apiserver that
//! `scripts/setup` builds from the pinned Kubernetes module (`integration/kube`, into
//! `target/kube/bin`), RBAC authorization, a serving certificate and a service-account signing
//! key of the test's own, an admin identity (a client certificate in `system:masters`) for
//! set-up, bound to loopback, stopped by PID, state in a scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::EtcdServer;
use crate::peers::Scratch;
use crate::pki::{Ca, rsa_key_pair};
use crate::require;

/// Where `scripts/setup` puts kube-apiserver and kubectl.
pub fn kube_bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/kube/bin")
        .join(name)
}

/// A running API server owned by the test.
pub struct KubeApi {
    child: std::sync::Mutex<Option<Child>>,
    args: Vec<String>,
    dir: Scratch,
    port: u16,
    ca: PathBuf,
    /// A kubeconfig with the admin identity.
    pub admin: PathBuf,
    etcd: EtcdServer,
}

impl KubeApi {
    /// Starts etcd and kube-apiserver, or returns `None` (after printing why) when the set-up
    /// has not built them outside CI; under `CI=true` a missing binary is a failure.
    pub fn start(test: &str) -> Option<KubeApi> {
        for tool in ["kube-apiserver", "kubectl"] {
            if !kube_bin(tool).exists() {
                if require::in_ci() {
                    panic!("{test}: {tool} is missing but .ci/run builds it (scripts/setup)");
                }
                eprintln!("SKIP {test}: {tool} is not built (run scripts/setup)");
                return None;
            }
        }
        if !require::tools_present(test, &["openssl"]) {
            return None;
        }
        // Progress notifications every second (etcd's default is 10 minutes): the API
        // server's watch cache then learns of revisions other kinds' writes made, and sends
        // watchers of quiet kinds bookmarks within seconds, as in a busy cluster.
        let etcd = EtcdServer::start_with(
            test,
            &["--experimental-watch-progress-notify-interval", "1s"],
        )?;
        let dir = Scratch::new("kube");
        let ca = Ca::new(&dir.0, "kube-ca");
        let serving = ca.issue(
            "apiserver",
            "/CN=kube-apiserver",
            &[
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
                "extendedKeyUsage=serverAuth",
            ],
        );
        let admin = ca.issue(
            "admin",
            "/O=system:masters/CN=serval-test-admin",
            &["extendedKeyUsage=clientAuth"],
        );
        let (sa_key, sa_pub) = rsa_key_pair(&dir.0, "service-accounts");
        let port = crate::etcd::free_port();
        let s = |p: &Path| p.display().to_string();
        let args = [
            format!("--etcd-servers={}", etcd.endpoint()),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", s(&serving.cert)),
            format!("--tls-private-key-file={}", s(&serving.key)),
            format!("--client-ca-file={}", s(&ca.cert)),
            format!("--service-account-key-file={}", s(&sa_pub)),
            format!("--service-account-signing-key-file={}", s(&sa_key)),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // As every real cluster that runs a CNI DaemonSet: its init step is privileged.
            "--allow-privileged=true".into(),
            // A loopback address cannot be the kubernetes Service's endpoint.
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", s(&dir.path("certs"))),
        ];
        let admin_kc = dir.path("admin.kubeconfig");
        let api = KubeApi {
            child: std::sync::Mutex::new(None),
            args: args.to_vec(),
            port,
            ca: ca.cert.clone(),
            admin: admin_kc.clone(),
            dir,
            etcd,
        };
        api.spawn();
        std::fs::write(
            &admin_kc,
            api.kubeconfig_text(&format!(
                "client-certificate: {}\n    client-key: {}",
                s(&admin.cert),
                s(&admin.key)
            )),
        )
        .expect("write kubeconfig");
        api.wait_ready();
        Some(api)
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path("kube-apiserver.log"))
            .expect("log file");
        let child = Command::new(kube_bin("kube-apiserver"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        *self.child.lock().expect("child lock") = Some(child);
    }

    fn stop(&self) {
        if let Some(mut c) = self.child.lock().expect("child lock").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the API server by PID and starts it again on the same etcd (clients see their
    /// watches end and must resume or relist).
    pub fn restart(&self) {
        self.stop();
        self.spawn();
        self.wait_ready();
    }

    /// The API server's etcd (to compact it, as a long-running cluster does).
    pub fn etcd_endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    fn kubeconfig_text(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n\
             - name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n",
            self.url(),
            self.ca.display()
        )
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("kube-apiserver not ready in 90 s:\n{}", self.log());
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Its address (for a [`crate::LoopbackForward`] into a node's namespace, which then
    /// reaches it at the same URL).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster CA (what pods find as `ca.crt` in their service-account mount).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The tail of its log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin, args)
    }

    /// Runs kubectl with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(kube_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl as the admin and returns its stdout; panics with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies files of `manifests/` (server-side, as the admin) and, when `crds.yaml` is
    /// among them, waits until every CRD is established.
    pub fn apply_manifests(&self, files: &[&str]) -> Result<(), String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        for file in files {
            let path = dir.join(file).display().to_string();
            let out = self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path]);
            if !out.status.success() {
                return Err(format!(
                    "{file}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            if *file == "crds.yaml" {
                self.kubectl_ok(&[
                    "wait",
                    "--for",
                    "condition=established",
                    "--timeout=60s",
                    "crd",
                    "--all",
                ]);
            }
        }
        Ok(())
    }

    /// A token for a ServiceAccount through the TokenRequest API, as the kubelet gets one.
    pub fn token(&self, namespace: &str, service_account: &str) -> String {
        self.kubectl_ok(&[
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration=1h",
        ])
        .trim()
        .to_string()
    }

    /// A kubeconfig (in the scratch directory) that authenticates with `token`.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path(&format!("{name}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_text(&format!("token: {token}")))
            .expect("write kubeconfig");
        path
    }
}

/// What the API server counted (its own metrics): requests by (verb, resource) and response
/// bytes by resource.
#[derive(Debug, Default, Clone)]
pub struct ServerCounts {
    /// `apiserver_request_total`, summed over codes and scopes.
    pub requests: std::collections::BTreeMap<(String, String), f64>,
    /// `apiserver_response_sizes_sum` by resource.
    pub bytes: std::collections::BTreeMap<String, f64>,
}

impl ServerCounts {
    /// Requests of `verb` on `resource` (e.g. `LIST`, `pods`).
    pub fn requests_of(&self, verb: &str, resource: &str) -> f64 {
        self.requests
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    /// Reads the Prometheus text of `/metrics`.
    pub fn parse(text: &str) -> ServerCounts {
        fn label<'a>(labels: &'a str, name: &str) -> &'a str {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or("")
        }
        let mut c = ServerCounts::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let body = |metric: &str| {
                series
                    .strip_prefix(metric)
                    .and_then(|l| l.strip_prefix('{'))
                    .and_then(|l| l.strip_suffix('}'))
            };
            if let Some(labels) = body("apiserver_request_total") {
                let key = (
                    label(labels, "verb").to_string(),
                    label(labels, "resource").to_string(),
                );
                *c.requests.entry(key).or_default() += v;
            } else if let Some(labels) = body("apiserver_response_sizes_sum") {
                *c.bytes
                    .entry(label(labels, "resource").to_string())
                    .or_default() += v;
            }
        }
        c
    }
}

impl KubeApi {
    /// Starts one `serval-node controllers` replica named `name` (its Lease identity) with a
    /// token of the serval-controllers ServiceAccount, as the Deployment runs it, plus `env`
    /// (`KEY=value`); its log goes to `log_dir`, and it is stopped by PID when dropped.
    pub fn start_controllers(&self, name: &str, env: &[&str], log_dir: &Path) -> crate::Daemon {
        let token = self.token("kube-system", "serval-controllers");
        let kubeconfig = format!(
            "KUBECONFIG={}",
            self.kubeconfig_with_token("controllers", &token).display()
        );
        let pod_name = format!("POD_NAME={name}");
        let bin = crate::require::serval_bin("serval-node")
            .display()
            .to_string();
        let mut argv = vec!["env", &kubeconfig, "POD_NAMESPACE=kube-system", &pod_name];
        argv.extend(env);
        argv.extend([bin.as_str(), "controllers"]);
        crate::Daemon::start_here(name, &argv, log_dir).expect("start serval-node controllers")
    }

    /// The API server's request and response-size counters now (read as the admin).
    pub fn server_counts(&self) -> ServerCounts {
        ServerCounts::parse(&self.kubectl_ok(&["get", "--raw", "/metrics"]))
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}
