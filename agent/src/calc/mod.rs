//! Pure calculation: from resources to what this node should look like. Every decision the
//! node agent makes is here, and so are the types it decides in; dataplane managers only
//! apply them. No kernel, no datastore, no clock; tested without either.
//!
//! ```text
//!  SyncEvent ─► cache::ClusterState ──(desired)──► Desired ─► node::sequencer
//!  best paths ─┘   typed, one map per kind          │ peers (peers), exports (bgp_export)
//!                                                   │ routes (routes → kernel_table)
//!                                                   │ tunnels, VTEPs, MTU (tunnels, routes)
//!                                                   └ policy inputs (policy), natOutgoing
//! ```

pub mod bgp_export;
pub mod bgp_filter;
pub mod cache;
pub mod desired;
pub mod kernel_table;
pub mod peers;
pub mod policy;
pub mod routes;
pub mod services;
pub mod tunnels;

#[cfg(test)]
mod peers_tests;
