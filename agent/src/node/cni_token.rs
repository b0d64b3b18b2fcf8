//! serval-cni's credentials, as calico-node keeps its CNI plugin's: the plugin has a
//! ServiceAccount of its own (`serval-cni`), and the agent mints it a token through the
//! TokenRequest API (24 hours), writes the plugin's kubeconfig with it (mode 0600, atomically)
//! and mints the next one when a third of the lifetime is left. Where the cluster refuses
//! (manifests without the `serval-cni` account), the agent's own rotating token is copied
//! instead, as before.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use super::install_cni::{refresh_kubeconfig, render_kubeconfig_with, write_kubeconfig_if_changed};

/// How long a minted token lives (Calico's CNI token lifetime).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Mints a token for `service_account` in `namespace` valid for `lifetime`.
pub async fn mint(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    lifetime: Duration,
) -> Result<String, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(lifetime.as_secs() as i64),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let got = api
        .create_token_request(service_account, &PostParams::default(), &req)
        .await?;
    got.status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            kube::Error::Service(std::io::Error::other("TokenRequest returned no token").into())
        })
}

/// The copied token only lasts while the kubelet keeps rotating it: say so when it is
/// within 10 minutes of expiry.
fn warn_if_expiring(sa_dir: &std::path::Path) {
    let exp = std::fs::read_to_string(sa_dir.join("token"))
        .ok()
        .and_then(|t| super::install_cni::token_expiry(&t));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(exp) = exp.filter(|e| e.saturating_sub(now) < 600) {
        tracing::warn!(
            expires_in_s = exp.saturating_sub(now),
            "the service-account token expires within 10 minutes and has not been rotated"
        );
    }
}

/// Why install-cni could not give the plugin a token of its own (it keeps the copied one).
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Not running in a pod: the API server's address is unknown.
    #[error("KUBERNETES_SERVICE_HOST is not set")]
    NoApiServer,
    /// The API server refused or could not be reached.
    #[error("minting the token: {0}")]
    Kube(#[from] kube::Error),
    /// Writing the kubeconfig failed.
    #[error(transparent)]
    Install(#[from] super::install_cni::InstallError),
}

/// install-cni's step: mints serval-cni's first token with the pod's own account and
/// writes the plugin's kubeconfig with it.
pub async fn install_minted(args: &super::install_cni::InstallArgs) -> Result<(), MintError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| MintError::NoApiServer)?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "kube-system".into());
    let account =
        std::env::var("SERVAL_CNI_SERVICE_ACCOUNT").unwrap_or_else(|_| "serval-cni".into());
    let client = kube::Client::try_default().await?;
    let token = mint(&client, &namespace, &account, TOKEN_LIFETIME).await?;
    let kc = render_kubeconfig_with(&args.service_account_dir, &token, &host, &port)?;
    write_kubeconfig_if_changed(&args.conf_dir, &kc)?;
    Ok(())
}

/// Where and for whom the plugin's kubeconfig is kept.
#[derive(Debug, Clone)]
pub struct CniCredentials {
    /// The agent's namespace (where the plugin's ServiceAccount lives).
    pub namespace: String,
    /// The plugin's ServiceAccount.
    pub service_account: String,
    /// The agent's service-account directory (the cluster CA; the fallback token).
    pub sa_dir: PathBuf,
    /// The host's CNI configuration directory as mounted here.
    pub conf_dir: PathBuf,
    /// The API server as pods reach it.
    pub host: String,
    /// Its port.
    pub port: String,
}

/// Keeps the plugin's kubeconfig current until the agent stops.
pub async fn run(client: kube::Client, c: CniCredentials) {
    let mut minted_once = false;
    loop {
        let next = match mint(&client, &c.namespace, &c.service_account, TOKEN_LIFETIME).await {
            Ok(token) => {
                match render_kubeconfig_with(&c.sa_dir, &token, &c.host, &c.port)
                    .and_then(|kc| write_kubeconfig_if_changed(&c.conf_dir, &kc))
                {
                    Ok(_) => {
                        tracing::info!(
                            service_account = %c.service_account,
                            "serval-cni kubeconfig written with a fresh token"
                        );
                        minted_once = true;
                        TOKEN_LIFETIME / 3
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write serval-cni's kubeconfig");
                        Duration::from_secs(60)
                    }
                }
            }
            Err(e) => {
                if !minted_once {
                    tracing::warn!(
                        error = %e,
                        service_account = %c.service_account,
                        "cannot mint serval-cni's token (TokenRequest); copying the agent's own rotating token instead"
                    );
                }
                if let Err(e) = refresh_kubeconfig(&c.sa_dir, &c.conf_dir, &c.host, &c.port) {
                    tracing::warn!(error = %e, "cannot refresh serval-cni's kubeconfig");
                }
                warn_if_expiring(&c.sa_dir);
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(next).await;
    }
}
