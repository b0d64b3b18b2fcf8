//! BFD (RFC 5880/5881): single-hop, asynchronous mode, so a BGP session over a dead link
//! goes down in well under a second instead of waiting for the hold timer. [`packet`] is
//! the wire format, [`session`] the sans-IO state machine, [`socket`] the UDP sockets with
//! the TTL-255 check, and [`task`] the task that owns them.

pub mod packet;
pub mod session;
pub mod socket;
pub mod task;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use packet::BfdState;
pub use task::BfdHandle;

/// BFD settings for one peer; FRR's defaults (300 ms, 300 ms, 3) detect a failure in
/// about 0.9 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BfdConfig {
    /// Desired minimum interval between our packets, milliseconds.
    #[serde(default = "default_interval")]
    pub min_tx_ms: u32,
    /// Fastest rate we accept packets at, milliseconds.
    #[serde(default = "default_interval")]
    pub min_rx_ms: u32,
    /// Missed packets before the peer is declared down.
    #[serde(default = "default_multiplier")]
    pub multiplier: u8,
}

fn default_interval() -> u32 {
    300
}

fn default_multiplier() -> u8 {
    3
}

impl Default for BfdConfig {
    fn default() -> Self {
        BfdConfig {
            min_tx_ms: default_interval(),
            min_rx_ms: default_interval(),
            multiplier: default_multiplier(),
        }
    }
}

impl BfdConfig {
    /// Checks ranges RFC 5880 and sanity ask for; the message names the field.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        if !(10..=60_000).contains(&self.min_tx_ms) || !(10..=60_000).contains(&self.min_rx_ms) {
            return Err(ConfigError::speaker(
                "bfd.minTxMs",
                "minTxMs and minRxMs must be 10..=60000",
            ));
        }
        if self.multiplier == 0 {
            return Err(ConfigError::speaker("bfd.multiplier", "must be at least 1"));
        }
        Ok(())
    }
}

/// A session changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdEvent {
    /// The peer.
    pub peer: IpAddr,
    /// Its new state.
    pub state: BfdState,
    /// The local diagnostic code.
    pub diag: u8,
    /// The peer took its end administratively down (not a failure).
    pub remote_admin_down: bool,
}

/// One session as status output shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BfdPeerStatus {
    /// The peer.
    pub peer: IpAddr,
    /// State.
    pub state: BfdState,
    /// Our discriminator.
    pub local_discriminator: u32,
    /// The peer's discriminator (0 until heard).
    pub remote_discriminator: u32,
    /// Current detection time.
    pub detection_time_ms: u64,
    /// Local diagnostic.
    pub diagnostic: u8,
}
