//! A loopback-to-loopback TCP forwarder across namespaces: listens on `127.0.0.1:<port>` inside
//! a test namespace and connects each accepted stream to a server on the test process's own
//! loopback (etcd). Agents and the CNI plugin inside node namespaces reach the test's etcd this
//! way without any interface or address in the host namespace.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::netns::Netns;

/// A running forwarder; stops (and closes its listener) when dropped.
pub struct LoopbackForward {
    stop: Arc<AtomicBool>,
    port: u16,
    ns_name: String,
    thread: Option<JoinHandle<()>>,
}

fn enter(path: &str) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl LoopbackForward {
    /// Listens on `127.0.0.1:port` in `ns` and forwards to `target` on this process's loopback.
    pub fn start(ns: &Netns, port: u16, target: SocketAddr) -> io::Result<LoopbackForward> {
        // Remember where we are now (the test's namespace), to dial from there.
        let home_ns = std::fs::File::open("/proc/thread-self/ns/net")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns_path = format!("/run/netns/{}", ns.name());
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = enter(&ns_path).and_then(|()| TcpListener::bind(("127.0.0.1", port)));
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let home_ns = Arc::new(home_ns);
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inner) = conn else { continue };
                let home_ns = home_ns.clone();
                std::thread::spawn(move || {
                    // This thread starts in the node namespace; dial from the test's.
                    let dialed = home_ns
                        .try_clone()
                        .and_then(|f| {
                            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(io::Error::from)
                        })
                        .and_then(|()| TcpStream::connect(target));
                    let Ok(outer) = dialed else {
                        let _ = inner.shutdown(Shutdown::Both);
                        return;
                    };
                    // A relay must not hold small writes back (Nagle against the peer's
                    // delayed ACK costs ~40 ms per request/response round trip).
                    let _ = inner.set_nodelay(true);
                    let _ = outer.set_nodelay(true);
                    let (Ok(inner2), Ok(outer2)) = (inner.try_clone(), outer.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || pipe(inner, outer));
                    pipe(outer2, inner2);
                    let _ = up.join();
                });
            }
        });
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("forwarder thread died"))??;
        Ok(LoopbackForward {
            stop,
            port,
            ns_name: ns.name().to_string(),
            thread: Some(thread),
        })
    }

    /// The URL to use inside the namespace.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LoopbackForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with one connection from inside the namespace.
        let path = format!("/run/netns/{}", self.ns_name);
        let port = self.port;
        let woke = std::thread::spawn(move || {
            enter(&path).is_ok() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .join()
        .unwrap_or(false);
        // If the namespace is already gone the listener thread cannot be woken; it holds
        // nothing but a socket in a dead namespace, so leave it rather than hang.
        if let (true, Some(t)) = (woke, self.thread.take()) {
            let _ = t.join();
        }
    }
}
