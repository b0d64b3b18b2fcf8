//! Serval's policy model. Pure: no kernel, no datastore.
//!
//! Today this holds the Calico-style selector language that IP pools, BGP peers and policies
//! share, and the policy rule model with its validation; the compiler to iptables joins them
//! with the network-policy work.

pub mod model;
pub mod selector;

pub use selector::{Labels, Selector, SelectorError};
