//! Serval's policy model and compiler. Pure: no kernel, no datastore.
//!
//! - [`selector`]: the Calico selector language shared by pools, BGP peers and policies;
//! - [`model`]: the rule model with its validation;
//! - [`compile`]: policies + endpoints → one family's chains and ipsets ([`ipt`]);
//! - [`nat`]: natOutgoing as nat-table chains and sets, in the same form;
//! - [`eval`]: an evaluator over the compiled rules, for tests;
//! - [`fixtures`]: a synthetic cluster at scale for the benchmarks.

pub mod compile;
pub mod eval;
pub mod fixtures;
pub mod ipt;
pub mod model;
pub mod nat;
pub mod selector;

pub use selector::{Labels, Selector, SelectorError};
