//! Serval's iptables and ipset state, one manager for policy (filter table) and natOutgoing
//! (nat table) in both families: the backend and tools ([`tools`]), reading the kernel back
//! ([`readback`]) and the desired-vs-actual manager ([`manager`]).
//!
//! ```text
//!  calc: policy Ruleset + nat Ruleset ──► FirewallRules ──► FirewallManager
//!                                                            │ apply: difference only
//!                                                            │ resync: read back, repair, count
//!        ipset restore ◄── sets first, destroyed last ───────┤
//!        iptables-restore --noflush ◄── changed chains ──────┤
//!        iptables -I/-D ◄── commented hooks ─────────────────┘
//!        iptables-save, ipset save ──► readback ──► hashes per rule, sets, hooks
//! ```

pub mod manager;
pub mod readback;
pub mod tools;

pub use manager::{
    FamilyRules, FirewallError, FirewallManager, FirewallReport, FirewallRules, Repairs,
};
pub use tools::{Backend, SystemTools, ToolRunner, detect_backend};
