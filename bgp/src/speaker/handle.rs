//! The speaker's public API: a cloneable handle that sends commands to the owner task.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use super::Speaker;
use crate::af::Family;
use crate::config::{LocalRoute, PeerConfig, SpeakerConfig};
use crate::policy::{AcceptAll, RoutePolicy};
use crate::status::{BestPathChange, RouteView, RoutesQuery, Status};

/// Errors the speaker API returns.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The configuration is invalid; the error names the peer and the field.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A peer with this address already exists.
    #[error("peer {0} already exists")]
    DuplicatePeer(IpAddr),
    /// No peer with this address.
    #[error("no peer {0}")]
    UnknownPeer(IpAddr),
    /// Binding the BGP listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address we tried.
        addr: std::net::SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The speaker task has stopped.
    #[error("the speaker task has stopped")]
    Stopped,
}

/// Requests to the speaker task.
pub(crate) enum Command {
    AddPeer(PeerConfig, oneshot::Sender<Result<(), SpeakerError>>),
    UpdatePeer(PeerConfig, oneshot::Sender<Result<(), SpeakerError>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
    Announce(LocalRoute, oneshot::Sender<Result<(), SpeakerError>>),
    Withdraw(IpNet, oneshot::Sender<Result<(), SpeakerError>>),
    Subscribe(mpsc::UnboundedSender<Vec<BestPathChange>>),
    Status(oneshot::Sender<Status>),
    Routes(RoutesQuery, oneshot::Sender<Vec<RouteView>>),
    SetPolicy(Arc<dyn RoutePolicy>, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable handle on a running speaker.
#[derive(Clone)]
pub struct SpeakerHandle {
    tx: mpsc::Sender<Command>,
}

impl SpeakerHandle {
    /// Starts a speaker with no filters; binds its listener before returning.
    pub async fn start(cfg: SpeakerConfig) -> Result<SpeakerHandle, SpeakerError> {
        Self::start_with_policy(cfg, Arc::new(AcceptAll)).await
    }

    /// Starts a speaker with the given import/export policy.
    pub async fn start_with_policy(
        cfg: SpeakerConfig,
        policy: Arc<dyn RoutePolicy>,
    ) -> Result<SpeakerHandle, SpeakerError> {
        cfg.validate().map_err(SpeakerError::Config)?;
        let (tx, rx) = mpsc::channel(256);
        let speaker = Speaker::new(cfg, policy)?;
        tokio::spawn(speaker.run(rx));
        Ok(SpeakerHandle { tx })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpeakerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| SpeakerError::Stopped)?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Adds a peer and starts its session.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.call(|r| Command::AddPeer(peer, r)).await?
    }

    /// Changes a peer; the session restarts only if a session parameter changed.
    pub async fn update_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.call(|r| Command::UpdatePeer(peer, r)).await?
    }

    /// Removes a peer, sending it a Cease (peer de-configured).
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.call(|r| Command::RemovePeer(address, r)).await?
    }

    /// Originates (or changes) a local route.
    pub async fn announce(&self, route: LocalRoute) -> Result<(), SpeakerError> {
        self.call(|r| Command::Announce(route, r)).await?
    }

    /// Stops originating a local route.
    pub async fn withdraw(&self, prefix: IpNet) -> Result<(), SpeakerError> {
        self.call(|r| Command::Withdraw(prefix, r)).await?
    }

    /// Streams best-path changes in batches; the first batch is the current table.
    pub async fn subscribe(
        &self,
    ) -> Result<mpsc::UnboundedReceiver<Vec<BestPathChange>>, SpeakerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx
            .send(Command::Subscribe(tx))
            .await
            .map_err(|_| SpeakerError::Stopped)?;
        Ok(rx)
    }

    /// A snapshot of peers and tables.
    pub async fn status(&self) -> Result<Status, SpeakerError> {
        self.call(Command::Status).await
    }

    /// Loc-RIB entries of a family with every candidate and why it lost; optionally only
    /// prefixes inside `within`. Fetched page by page, so a large table never holds up
    /// the speaker for long.
    pub async fn routes(
        &self,
        family: Family,
        within: Option<IpNet>,
    ) -> Result<Vec<RouteView>, SpeakerError> {
        let mut q = RoutesQuery::first(family, within);
        let mut out = Vec::new();
        loop {
            let page = self.routes_page(q.clone()).await?;
            let full = page.len() == q.limit;
            q.after = page.last().map(|r| r.prefix);
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// One page of a routes query (prefix order; at most [`RoutesQuery::MAX_LIMIT`]).
    pub async fn routes_page(&self, mut q: RoutesQuery) -> Result<Vec<RouteView>, SpeakerError> {
        q.limit = q.limit.clamp(1, RoutesQuery::MAX_LIMIT);
        self.call(|r| Command::Routes(q, r)).await
    }

    /// Replaces the import/export policy: routes sent are re-filtered at once, routes held
    /// are re-filtered as peers send their tables again (ROUTE-REFRESH; a peer that cannot
    /// refresh has its session restarted).
    pub async fn set_policy(&self, policy: Arc<dyn RoutePolicy>) -> Result<(), SpeakerError> {
        self.call(|r| Command::SetPolicy(policy, r)).await
    }

    /// Sends every peer a Cease (administrative shutdown) and stops the task.
    pub async fn shutdown(&self) -> Result<(), SpeakerError> {
        self.call(Command::Shutdown).await
    }
}
