//! The node's kernel state, one manager per kind: routes, tunnel devices (IPIP, VXLAN with its
//! neighbour/FDB entries), iptables chains and ipsets (policy and natOutgoing). Each manager holds desired vs. actual, writes only the difference in
//! one batch, repairs drift on a periodic resync with jitter, and writes nothing until told the
//! datastore is in sync, so an agent restart never disturbs a working node.
//!
//! ```text
//!  calc (pure) ── desired ──► route_manager ──┐
//!                            tunnel ─────────┴──► Netlink (the only rtnetlink user)
//!                            firewall ──────────► ipset restore + iptables-restore --noflush
//!                              (policy + nat)       read back: iptables-save, ipset save
//! ```

pub mod firewall;
pub mod link_watch;
pub mod netlink;
pub mod policy;
pub mod route_manager;
pub mod route_table;
pub mod tunnel;

/// Why a kernel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The netlink socket could not be opened (or the namespace entered).
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {message}")]
    Netlink {
        /// What we tried.
        what: String,
        /// The errno (positive), 0 when not from the kernel.
        code: i32,
        /// The kernel's or the library's message.
        message: String,
    },
    /// A route names a device that does not exist (yet).
    #[error("device {0:?} does not exist")]
    NoDevice(String),
    /// The kernel lacks a feature (the message says which and what to do).
    #[error("{0}")]
    Unsupported(String),
    /// A value we cannot express in netlink.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl DataplaneError {
    /// A create refused because a route of another owner holds the destination and
    /// metric: Serval leaves it alone and reports it.
    pub fn is_foreign_route(&self) -> bool {
        matches!(self, DataplaneError::Netlink { code, .. } if *code == libc::EEXIST)
    }
}
