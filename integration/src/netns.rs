//! Network namespaces owned by a test: unique names, removed on drop even when the test
//! panics, and veth links between them.

use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted (with its interfaces) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run(args: &[&str]) -> io::Result<Output> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

impl Netns {
    /// Creates `sv<pid>-<n>-<label>` with loopback up.
    pub fn new(label: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("sv{}-{n}-{label}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // Routing daemons under test must not be slowed down by duplicate address detection.
        let _ = ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs a command inside the namespace and returns its output (failing on non-zero exit).
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs a command inside the namespace and returns stdout as text.
    pub fn output(&self, args: &[&str]) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&self.exec(args)?.stdout).into_owned())
    }

    /// Adds an address (`10.0.0.1/24` or `fd00::1/64`) to an interface.
    pub fn addr(&self, dev: &str, cidr: &str) -> io::Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// HTTP GET from inside the namespace (the daemons' status endpoints listen there).
    pub fn http_get(&self, addr: &str, path: &str) -> io::Result<String> {
        use std::io::{Read, Write};
        let name = self.name.clone();
        let (addr, path) = (addr.to_string(), path.to_string());
        std::thread::spawn(move || -> io::Result<String> {
            let f = std::fs::File::open(format!("/run/netns/{name}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
            if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
                return Err(io::Error::other(format!(
                    "GET {path}: {}",
                    head.lines().next().unwrap_or("")
                )));
            }
            Ok(body.to_string())
        })
        .join()
        .map_err(|_| io::Error::other("HTTP thread panicked"))?
    }
}

impl Netns {
    /// Runs `f` on a thread inside the namespace (sockets it opens stay there).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    /// Serves TCP on `port` inside the namespace: every connection gets `reply` and is closed.
    pub fn serve_tcp(&self, port: u16, reply: &'static str) -> io::Result<()> {
        self.serve_tcp_with(port, move |_| reply.to_string())
    }

    /// Serves TCP on `port`: every connection is told the address it came from (to see
    /// whether traffic was masqueraded).
    pub fn serve_tcp_echo_peer(&self, port: u16) -> io::Result<()> {
        self.serve_tcp_with(port, |peer| peer.ip().to_string())
    }

    fn serve_tcp_with(
        &self,
        port: u16,
        reply: impl Fn(std::net::SocketAddr) -> String + Send + 'static,
    ) -> io::Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let bound = std::fs::File::open(&path)
                .and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)
                })
                // Both families on one socket ([::] takes IPv4 as mapped addresses), IPv4
                // alone where the namespace has no IPv6.
                .and_then(|()| {
                    std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))
                        .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)))
                });
            match bound {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    for mut conn in l.incoming().flatten() {
                        use std::io::Write;
                        let text = conn
                            .peer_addr()
                            .map(|a| {
                                reply(std::net::SocketAddr::new(a.ip().to_canonical(), a.port()))
                            })
                            .unwrap_or_default();
                        let _ = conn.write_all(text.as_bytes());
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        rx.recv()
            .map_err(|_| io::Error::other("server thread died"))?
    }

    /// Connects from inside the namespace to `addr` and returns what the server sent.
    pub fn tcp_fetch(&self, addr: std::net::SocketAddr) -> io::Result<String> {
        self.run(move || {
            use std::io::Read;
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair named `a_dev` / `b_dev`, both up.
pub fn link(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> io::Result<()> {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let (ta, tb) = (
        format!("svt{n}a{}", std::process::id() % 10000),
        format!("svt{n}b{}", std::process::id() % 10000),
    );
    run(&[
        "ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb,
    ])?;
    run(&["ip", "link", "set", &ta, "netns", a.name(), "name", a_dev])?;
    run(&["ip", "link", "set", &tb, "netns", b.name(), "name", b_dev])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}
