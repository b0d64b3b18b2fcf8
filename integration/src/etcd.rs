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
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdServer {
    /// Starts etcd, or returns `None` (after printing why) when it is not installed outside CI.
    /// Under `CI=true` a missing etcd is a failure: CI installs it.
    pub fn start(test: &str) -> Option<EtcdServer> {
        if !require::have("etcd") {
            if require::in_ci() {
                panic!(
                    "{test}: `etcd` is missing but CI installs it (.ci/run); this is a set-up bug"
                );
            }
            eprintln!(
                "SKIP {test}: `etcd` is not installed (run scripts/setup to install etcd-server)"
            );
            return None;
        }
        let dir = Scratch::new("etcd");
        // On tmpfs when there is one: etcd fsyncs every write, which a test need not wait for.
        let shm = std::path::Path::new("/dev/shm");
        let data = if shm.is_dir() {
            shm.join(dir.0.file_name().expect("scratch dir has a name"))
        } else {
            dir.path("data")
        };
        let mut server = EtcdServer {
            child: None,
            dir,
            data,
            client_port: free_port(),
            peer_port: free_port(),
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path("etcd.log")).expect("etcd log file");
        let child = Command::new("etcd")
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
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
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
        format!("http://127.0.0.1:{}", self.client_port)
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
