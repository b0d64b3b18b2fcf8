//! Test support for Serval's scenario and interop tests: network namespaces the test
//! owns and always removes, daemons started inside them and stopped by PID, HTTP from
//! inside a namespace, a real etcd on loopback, "eventually" polling, and the skip rules of the project contract
//! (skip with a printed reason when the kernel lacks something; fail when `CI=true` and
//! an installed tool is missing).

pub mod bench_table;
pub mod clab;
pub mod cluster;
pub mod cni;
pub mod daemon;
pub mod etcd;
pub mod forward;
pub mod ipam_load;
pub mod kube;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod poll;
pub mod probe;
pub mod require;

pub use daemon::Daemon;
pub use etcd::{EtcdServer, EtcdTls};
pub use forward::LoopbackForward;
pub use netns::{Netns, link};
pub use poll::{eventually, eventually_async};

/// The runtime benches drive the agent's libraries with: two workers, like the machines.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
