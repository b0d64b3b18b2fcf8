//! Pure calculation: from resources to what this node should look like (BGP sessions,
//! routes, MTU, names). No kernel, no datastore, no clock; tested without either.

pub mod bgp_export;
pub mod peers;
pub mod policy;
pub mod routes;

#[cfg(test)]
mod peers_tests;
