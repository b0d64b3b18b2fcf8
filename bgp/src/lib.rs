//! serval-bgp: Serval's in-process BGP speaker, as a library with no Kubernetes and no
//! netlink in it, so it can be tested, fuzzed and benchmarked on its own.
//!
//! ```text
//!  peer tasks (connect, read, write)           agent / standalone binary
//!        │  PeerEvent                                │  Command (add peer, announce, status)
//!        ▼                                           ▼
//!  ┌──────────────────────── speaker task (one owner) ─────────────────────────┐
//!  │  Fsm per peer (sans-IO)   Rib: Adj-RIB-In → decision → Loc-RIB → Adj-RIB-Out │
//!  └───────────────────────────────────────────────────────────────────────────┘
//!        │ encoded UPDATEs per peer                  │ BestPathChange batches
//!        ▼                                           ▼
//!  writer task per connection                   subscribers (the FIB)
//! ```

pub mod af;
pub mod allocator;
pub mod bfd;
pub mod config;
mod connection;
pub mod decision;
pub mod export;
pub mod fsm;
pub mod packet;
pub mod policy;
pub mod rib;
pub mod sharded;
mod sockopt;
pub mod speaker;
pub mod status;
mod task;
