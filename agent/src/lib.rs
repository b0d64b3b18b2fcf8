//! Serval agent.
