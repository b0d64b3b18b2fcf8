//! A real etcd (Debian's `etcd-server`) for tests and benchmarks: loopback only, a temporary
//! data directory, stopped by PID when dropped (and restartable on the same data, to test
//! clients riding out an outage).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::Scratch;
use crate::require;

/// A running etcd server owned by the test.
pub struct EtcdServer {
    child: Option<Child>,
    dir: Scratch,
    data: std::path::PathBuf,
    client_port: u16,
    peer_port: u16,
    /// With TLS: the files, and a plain metrics port for the health check.
    tls: Option<(EtcdTls, u16)>,
    /// Extra flags, kept for restarts.
    extra: Vec<String>,
}

/// Certificates made for one test with openssl: a CA, etcd's server certificate for
/// 127.0.0.1, and a client certificate.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA certificate (PEM).
    pub ca: std::path::PathBuf,
    /// etcd's certificate and key.
    pub server_cert: std::path::PathBuf,
    /// etcd's key.
    pub server_key: std::path::PathBuf,
    /// A client certificate the CA signed.
    pub client_cert: std::path::PathBuf,
    /// Its key.
    pub client_key: std::path::PathBuf,
}

impl EtcdTls {
    /// Makes a CA and two certificates in `dir`.
    pub fn generate(dir: &std::path::Path, ca_name: &str) -> EtcdTls {
        let ca = crate::pki::Ca::new(dir, ca_name);
        let server = ca.issue(
            "server",
            "/CN=etcd",
            &[
                "subjectAltName=IP:127.0.0.1",
                "extendedKeyUsage=serverAuth,clientAuth",
            ],
        );
        let client = ca.issue(
            "client",
            "/CN=serval-node",
            &["extendedKeyUsage=clientAuth"],
        );
        EtcdTls {
            ca: ca.cert,
            server_cert: server.cert,
            server_key: server.key,
            client_cert: client.cert,
            client_key: client.key,
        }
    }
}

/// Compacts an etcd's whole history up to now, as a long-running cluster's periodic
/// compaction does: a watch resuming from an older revision is then refused.
pub async fn compact_to_now(etcd: &serval_agent::datastore::EtcdBackend) {
    let mut client = etcd.client();
    let rev = client
        .get("/", None)
        .await
        .expect("read revision")
        .header()
        .expect("header")
        .revision();
    client.compact(rev, None).await.expect("compact");
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdServer {
    /// Starts etcd, or returns `None` (after printing why) when it is not installed outside CI.
    /// Under `CI=true` a missing etcd is a failure: CI installs it.
    pub fn start(test: &str) -> Option<EtcdServer> {
        Self::start_with(test, &[])
    }

    /// [`EtcdServer::start`] with extra etcd flags.
    pub fn start_with(test: &str, extra: &[&str]) -> Option<EtcdServer> {
        Self::start_where(test, extra, false)
    }

    /// etcd with its data on the machine's disk, as a cluster runs it (every write waits for
    /// fsync): for benchmarks of what a datastore round trip costs.
    pub fn start_on_disk(test: &str) -> Option<EtcdServer> {
        Self::start_where(test, &[], true)
    }

    fn start_where(test: &str, extra: &[&str], on_disk: bool) -> Option<EtcdServer> {
        if !require::tools_present(test, &["etcd"]) {
            return None;
        }
        let dir = Scratch::new("etcd");
        // On tmpfs when there is one: etcd fsyncs every write, which a test need not wait for.
        let shm = std::path::Path::new("/dev/shm");
        let data = if shm.is_dir() && !on_disk {
            shm.join(dir.0.file_name().expect("scratch dir has a name"))
        } else {
            dir.path("data")
        };
        let mut server = EtcdServer::launch(dir, data, None, extra);
        server.spawn();
        Some(server)
    }

    /// Counters from etcd's `/metrics`: requests by gRPC method (`Range`, `Txn`, `Put`,
    /// `DeleteRange`, ...), `proposals` (writes committed through raft) and the WAL's
    /// `fsync_count` / `fsync_us` (total microseconds), to count what a client operation costs
    /// the datastore.
    pub fn request_counts(&self) -> std::collections::BTreeMap<String, u64> {
        use std::io::{Read, Write};
        let mut out = std::collections::BTreeMap::new();
        let port = self.tls.as_ref().map_or(self.client_port, |(_, m)| *m);
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return out;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_err() {
            return out;
        }
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        for line in text.lines() {
            let value = || line.rsplit(' ').next()?.parse::<f64>().ok();
            if let Some(rest) = line.strip_prefix("grpc_server_handled_total{")
                && rest.contains("grpc_service=\"etcdserverpb.KV\"")
                && let Some(method) = rest
                    .split("grpc_method=\"")
                    .nth(1)
                    .and_then(|m| m.split('"').next())
            {
                *out.entry(method.to_string()).or_default() += value().unwrap_or(0.0) as u64;
            } else if line.starts_with("etcd_server_proposals_committed_total ") {
                out.insert("proposals".into(), value().unwrap_or(0.0) as u64);
            } else if line.starts_with("etcd_disk_wal_fsync_duration_seconds_count ") {
                out.insert("fsync_count".into(), value().unwrap_or(0.0) as u64);
            } else if line.starts_with("etcd_disk_wal_fsync_duration_seconds_sum ") {
                out.insert("fsync_us".into(), (value().unwrap_or(0.0) * 1e6) as u64);
            }
        }
        out
    }

    /// The server's settings; [`EtcdServer::spawn`] starts it.
    fn launch(
        dir: Scratch,
        data: std::path::PathBuf,
        tls: Option<EtcdTls>,
        extra: &[&str],
    ) -> EtcdServer {
        EtcdServer {
            child: None,
            dir,
            data,
            client_port: free_port(),
            peer_port: free_port(),
            tls: tls.map(|t| (t, free_port())),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Starts etcd serving clients over TLS only and requiring a client certificate signed
    /// by the generated CA (`--client-cert-auth`), as a hardened cluster runs it.
    pub fn start_tls(test: &str) -> Option<(EtcdServer, EtcdTls)> {
        if !require::tools_present(test, &["etcd", "openssl"]) {
            return None;
        }
        let dir = Scratch::new("etcd-tls");
        let tls = EtcdTls::generate(&dir.0, "serval-test-ca");
        let data = dir.path("data");
        let mut server = EtcdServer::launch(dir, data, Some(tls.clone()), &[]);
        server.spawn();
        Some((server, tls))
    }

    fn spawn(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path("etcd.log")).expect("etcd log file");
        let mut cmd = Command::new("etcd");
        if let Some((tls, metrics)) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth")
                .args([
                    "--listen-metrics-urls",
                    &format!("http://127.0.0.1:{metrics}"),
                ]);
        }
        let child = cmd
            .args(["--name", "serval-test"])
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("serval-test={peer}")])
            .args(["--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Whether etcd's `/health` endpoint says it has a leader and serves requests.
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        // Over TLS the health check goes to the plain metrics listener.
        let port = self.tls.as_ref().map_or(self.client_port, |(_, m)| *m);
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = conn.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not become ready in 20 s; log:\n{}", self.log());
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client address (for a [`crate::LoopbackForward`] into a namespace).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("etcd.log")).unwrap_or_default()
    }

    /// Stops the server by PID (SIGKILL: an outage, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
