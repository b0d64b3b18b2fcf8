//! IPAM's error type: each variant says what the operator can do about it.

use std::net::IpAddr;

use crate::block::BlockError;
use crate::store::StoreError;

/// Address family, for messages and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why an IPAM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No enabled pool of the family applies to the node.
    #[error("no enabled {family} pool selects node {node:?}{names}")]
    NoPool {
        /// The family asked for.
        family: Family,
        /// The node.
        node: String,
        /// Pool names the request was limited to, if any (pre-formatted).
        names: String,
    },
    /// The pools have no free address this node may use.
    #[error(
        "no free {family} address for node {node:?}: got {got} of {wanted} \
         (pools full, block cap reached, or strict affinity forbids borrowing)"
    )]
    Exhausted {
        /// The family asked for.
        family: Family,
        /// The node.
        node: String,
        /// How many were asked for.
        wanted: usize,
        /// How many could be had (they were released again).
        got: usize,
    },
    /// The address is in no configured pool.
    #[error("{0} is not in any IP pool")]
    NotInPool(IpAddr),
    /// A specific address could not be had.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// Someone kept changing the same object; gave up after the retry bound.
    #[error("gave up after {attempts} conflicting writes to {what}")]
    TooManyConflicts {
        /// What was being written.
        what: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A pool's node selector does not parse.
    #[error("pool {pool}: {source}")]
    Selector {
        /// The pool.
        pool: String,
        /// The parse error.
        #[source]
        source: serval_policy::SelectorError,
    },
}
