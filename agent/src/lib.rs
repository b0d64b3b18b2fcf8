//! serval-agent: everything that touches the OS, the network or a datastore, behind the
//! thin `serval-node` binary.

pub mod autodetect;
pub mod calc;
pub mod cni;
pub mod controllers;
pub mod ctl;
pub mod dataplane;
pub mod datastore;
pub mod http;
pub mod metrics;
pub mod node;
pub mod node_metrics;
pub mod resources;
pub mod standalone;
pub mod status_table;
