//! Reachability probes between pod namespaces, run in parallel: TCP connects and UDP
//! request/response with short timeouts, collected into a matrix that can be compared with
//! an expectation and printed as a table of the differences.

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

/// How long a probe waits before calling the target unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One probe: from a namespace (by its /run/netns path) to an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    /// Source label (for messages).
    pub from: String,
    /// Source namespace path.
    pub from_ns: String,
    /// Target label.
    pub to: String,
    /// Target address.
    pub addr: SocketAddr,
    /// Protocol.
    pub proto: Proto,
}

fn enter(path: &str) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn run_one(p: &Probe) -> bool {
    if enter(&p.from_ns).is_err() {
        return false;
    }
    match p.proto {
        Proto::Tcp => TcpStream::connect_timeout(&p.addr, PROBE_TIMEOUT).is_ok(),
        Proto::Udp => {
            let Ok(s) = UdpSocket::bind(("0.0.0.0", 0)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
            if s.send_to(b"ping", p.addr).is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).is_ok()
        }
    }
}

/// Runs the probes on up to `parallel` threads; results in the same order.
pub fn run(probes: &[Probe], parallel: usize) -> Vec<bool> {
    let probes = Arc::new(probes.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(std::sync::Mutex::new(vec![false; probes.len()]));
    let threads: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (probes, next, results) = (probes.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(p) = probes.get(i) else { return };
                    // Each probe gets its own thread: a thread that entered a namespace
                    // stays there.
                    let p = p.clone();
                    let ok = std::thread::spawn(move || run_one(&p))
                        .join()
                        .unwrap_or(false);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = ok;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Arc::try_unwrap(results)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default()
}

/// The probes whose result differs from `expect`, as readable lines (empty when all agree).
pub fn differences(probes: &[Probe], got: &[bool], expect: impl Fn(&Probe) -> bool) -> Vec<String> {
    probes
        .iter()
        .zip(got)
        .filter(|(p, g)| expect(p) != **g)
        .map(|(p, g)| {
            format!(
                "{} -> {} {:?}/{}: expected {}, observed {}",
                p.from,
                p.to,
                p.proto,
                p.addr.port(),
                if expect(p) { "allowed" } else { "blocked" },
                if *g { "allowed" } else { "blocked" }
            )
        })
        .collect()
}

/// Serves UDP echo on `port` inside `ns` (a thread for the process lifetime).
pub fn serve_udp_echo(ns_path: &str, port: u16) -> io::Result<()> {
    let path = ns_path.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let bound = enter(&path).and_then(|()| UdpSocket::bind(("0.0.0.0", port)));
        match bound {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                let mut buf = [0u8; 512];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv()
        .map_err(|_| io::Error::other("UDP server thread died"))?
}
