//! `serval-node speaker`: the BGP speaker on its own, configured from a YAML file, for
//! tests, benchmarks and route-reflector hosts outside Kubernetes. SIGHUP re-reads the
//! file and applies the difference without touching unchanged sessions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serval_bgp::config::{LocalRoute, PeerConfig, SpeakerConfig};
use serval_bgp::speaker::{SpeakerError, SpeakerHandle};

/// The standalone speaker's file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandaloneConfig {
    /// Identity and listener.
    pub speaker: SpeakerConfig,
    /// Where `/status`, `/routes`, `/metrics`, `/livez` and `/readyz` are served.
    #[serde(default = "default_http")]
    pub http_address: SocketAddr,
    /// Neighbours.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Routes to originate.
    #[serde(default)]
    pub announce: Vec<LocalRoute>,
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9179))
}

/// What is wrong with the file's text, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not YAML of this schema (the message has line and column).
    #[error("{0}")]
    Yaml(String),
    /// The speaker section.
    #[error("speaker.{0}")]
    Speaker(serval_bgp::config::ConfigError),
    /// One peer.
    #[error("peers[{index}]: {source}")]
    Peer {
        /// Position in `peers`.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: serval_bgp::config::ConfigError,
    },
    /// Two peers with one address.
    #[error("peers[{index}]: address {address} repeats peers[{first}]")]
    RepeatedPeer {
        /// The later peer.
        index: usize,
        /// The earlier one.
        first: usize,
        /// Their address.
        address: IpAddr,
    },
}

/// Errors loading or applying the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema, or a value is out of range.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        #[source]
        source: ParseError,
    },
}

impl StandaloneConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<StandaloneConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<StandaloneConfig, ParseError> {
        let cfg: StandaloneConfig =
            serde_saphyr::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))?;
        cfg.speaker.validate().map_err(ParseError::Speaker)?;
        let mut seen = HashMap::new();
        for (index, p) in cfg.peers.iter().enumerate() {
            p.validate()
                .map_err(|source| ParseError::Peer { index, source })?;
            if let Some(first) = seen.insert(p.address, index) {
                return Err(ParseError::RepeatedPeer {
                    index,
                    first,
                    address: p.address,
                });
            }
        }
        Ok(cfg)
    }
}

/// Applies `new` on top of `old` (or from nothing): peers and routes added, changed and
/// removed, so unchanged sessions keep running.
pub async fn apply(
    speaker: &SpeakerHandle,
    old: Option<&StandaloneConfig>,
    new: &StandaloneConfig,
) -> Result<(), SpeakerError> {
    let old_peers: HashMap<IpAddr, &PeerConfig> = old
        .map(|o| o.peers.iter().map(|p| (p.address, p)).collect())
        .unwrap_or_default();
    let new_peers: HashMap<IpAddr, &PeerConfig> =
        new.peers.iter().map(|p| (p.address, p)).collect();
    for addr in old_peers.keys().filter(|a| !new_peers.contains_key(a)) {
        speaker.remove_peer(*addr).await?;
    }
    for (addr, p) in &new_peers {
        match old_peers.get(addr) {
            None => speaker.add_peer((*p).clone()).await?,
            Some(o) if o != p => speaker.update_peer((*p).clone()).await?,
            Some(_) => {}
        }
    }
    let old_routes: HashMap<IpNet, &LocalRoute> = old
        .map(|o| o.announce.iter().map(|r| (r.prefix, r)).collect())
        .unwrap_or_default();
    let new_routes: HashMap<IpNet, &LocalRoute> =
        new.announce.iter().map(|r| (r.prefix, r)).collect();
    for prefix in old_routes.keys().filter(|p| !new_routes.contains_key(p)) {
        speaker.withdraw(*prefix).await?;
    }
    for (prefix, r) in &new_routes {
        if old_routes.get(prefix) != Some(r) {
            speaker.announce((*r).clone()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_parses_as_written() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```yaml\n# speaker.yaml\n")
            .expect("the README's standalone example");
        let body = &readme[start + "```yaml\n".len()..];
        let yaml = &body[..body.find("```").expect("closing fence")];
        let cfg = StandaloneConfig::parse(yaml).unwrap_or_else(|e| panic!("README example: {e}"));
        let feed = cfg.peers.iter().find(|p| !p.export).expect("a feed");
        assert_eq!(feed.local_as, Some(65010));
    }

    #[test]
    fn parses_a_full_file() {
        let cfg = StandaloneConfig::parse(
            r#"
speaker:
  routerId: 10.0.0.1
  asNumber: 65001
  listenPort: 1179
httpAddress: 127.0.0.1:9999
peers:
  - address: 10.0.0.2
    asNumber: 65002
    holdTime: 30
  - address: "2001:db8::2"
    asNumber: 65001
    passive: true
    nextHop: self
announce:
  - prefix: 10.1.0.0/24
    communities: ["65001:100"]
"#,
        )
        .unwrap();
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(
            cfg.peers[1].next_hop,
            serval_bgp::config::NextHopMode::SelfAddress
        );
        assert_eq!(cfg.http_address.port(), 9999);
    }

    #[test]
    fn errors_name_the_field() {
        let e = StandaloneConfig::parse("speaker:\n  routerId: 10.0.0.1\n  asNumber: 1\npeers:\n  - address: 10.0.0.2\n    asNumber: 2\n    holdTme: 3\n").unwrap_err();
        assert!(matches!(e, ParseError::Yaml(_)));
        let e = e.to_string();
        assert!(e.contains("holdTme"), "{e}");
        let e = StandaloneConfig::parse("speaker:\n  routerId: 10.0.0.1\n  asNumber: 1\npeers:\n  - address: 10.0.0.2\n    asNumber: 2\n    holdTime: 2\n").unwrap_err();
        assert!(
            matches!(&e, ParseError::Peer { index: 0, source } if source.field == "holdTime"),
            "{e}"
        );
        let e = StandaloneConfig::parse("speaker:\n  routerId: not-an-ip\n  asNumber: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("routerId") || e.contains("line"), "{e}");
    }
}
