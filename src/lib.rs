//! oidc-bff: a Backend-for-Frontend security gateway. The browser holds only an HttpOnly
//! session cookie; tokens stay in an encrypted redb file on the server.
//!
//! This file lists the modules and assembles them in [`run`], with the background tasks it
//! starts. `docs/design.md` describes how the modules depend on each other.

// What the tests, benches and fuzz targets do not use is crate-private, and stays so.
#![warn(unreachable_pub)]

pub mod access_log;
pub mod admin;
mod auth;
pub mod cache;
mod client_tokens;
pub mod clock;
pub mod config;
mod connection;
pub mod cookies;
mod deadlines;
pub mod describe;
mod error;
pub mod flow;
mod hex;
pub mod http_client;
mod jwt;
pub mod logging;
pub mod login_params;
pub mod logout;
mod metrics;
mod notify;
pub mod oidc;
pub mod path;
mod pipeline;
pub mod policy;
pub mod proxy;
mod records;
mod redis_store;
pub mod redis_url;
mod refresh;
mod reply;
pub mod seal;
mod server;
pub mod session;
mod spa;
mod store;
mod sync;
mod tasks;
pub mod tickets;
pub mod tls;
pub mod units;
mod urls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::client_tokens::ClientTokens;
use crate::clock::Clock;
use crate::config::Config;
use crate::http_client::HttpClient;
use crate::oidc::Provider;
use crate::pipeline::Gateway;
use crate::proxy::Proxy;
use crate::refresh::Refresher;
use crate::store::StoreError;
use crate::tasks::Tasks;
use crate::tickets::OpenStoreError;
use crate::tls::{CertificateSource, TlsError};

/// Timeout for each call to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gateway is given from outside, so tests can substitute it.
pub struct Deps {
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Changes when the operator asks for a reload (SIGHUP): the certificate files and the
    /// proxy configuration file are read again; a bad new file is logged and the old kept.
    pub reload: Option<tokio::sync::watch::Receiver<u64>>,
    /// Where to serve Prometheus metrics (`--metrics-listen`, bound by the caller), if anywhere.
    pub metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").finish_non_exhaustive()
    }
}

/// The gateway could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory, key file or database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenStoreError),
    /// The session database could not be written at shutdown.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The SPA directory could not be used.
    #[error(transparent)]
    Spa(#[from] spa::SpaError),
}

/// Runs the gateway on `listener` until `shutdown` completes, then drains connections, writes
/// pending last-access times and closes the database.
pub async fn run(
    config: Config,
    listener: TcpListener,
    deps: Deps,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let client_tls = tls::client_config(config.oidc.ca_file.as_deref())?;
    let (tickets, master) = tickets::open_store(
        &config.storage,
        config.cache,
        config.session,
        Arc::clone(&deps.clock),
        tickets::MissingKey::Create,
        &client_tls,
    )
    .await?;
    let tickets = Arc::new(tickets);

    let (certified, source) = tls::certified_key(&config.tls)?;
    let certificates = Arc::new(tls::ReloadableCert::new(certified));
    let server_tls = tls::server_config(Arc::clone(&certificates))?;
    if source == CertificateSource::SelfSigned {
        tracing::warn!(
            "no --tls-cert/--tls-key given: serving a self-signed certificate for localhost; \
             browsers will warn. Use real certificates in production."
        );
    }
    let proxy = Arc::new(Proxy::new(
        &config.proxy,
        client_tls.clone(),
        config.cookie.clone(),
        Arc::clone(&tickets),
    ));
    let spa = config
        .static_dir
        .as_deref()
        .map(spa::Spa::new)
        .transpose()?;
    let http = HttpClient::new(client_tls, PROVIDER_TIMEOUT);
    let provider = Arc::new(Provider::new(
        config.oidc.clone(),
        http,
        Arc::clone(&deps.clock),
    ));
    let mut tasks = Tasks::default();
    tasks.spawn({
        let provider = Arc::clone(&provider);
        async move { provider.discover_until_ready().await }
    });
    let metrics = Arc::new(metrics::Metrics::new());
    let refresher = Arc::new(Refresher::new(
        Arc::clone(&provider),
        Arc::clone(&tickets),
        Arc::clone(&deps.clock),
        Arc::clone(&metrics),
        config.sweeps.refresh_interval,
    ));
    let auth = Auth::new(
        Arc::clone(&provider),
        Arc::clone(&tickets),
        Arc::clone(&refresher),
        master.flow_sealer(),
        config.cookie.clone(),
        Arc::clone(&deps.clock),
        auth::SignIn {
            params: config.login_params.clone(),
            allow: config.proxy.allow.clone(),
            resources: config.login_resources,
        },
    );
    let client_tokens = Arc::new(ClientTokens::new(
        Arc::clone(&provider),
        Arc::clone(&deps.clock),
        config.session.refresh_skew,
        &config.oidc.client_scopes.join(" "),
    ));
    let gateway = Arc::new(Gateway {
        auth,
        client_tokens,
        logout: logout::LogoutVerifier::new(Arc::clone(&provider), Arc::clone(&deps.clock)),
        provider: Arc::clone(&provider),
        refresher,
        proxy: Arc::clone(&proxy),
        spa,
        callback_path: config.oidc.callback_path.clone(),
        public_origin: config.proxy.public_origin.clone(),
        max_uri_bytes: config.limits.max_uri_bytes,
        max_header_bytes: config.limits.max_header_bytes,
        body_timeout: config.limits.header_timeout,
        metrics: Arc::clone(&metrics),
        framing: reply::Framing::new(&config.frame_ancestors),
    });
    tasks.spawn(tasks::flush_loop(Arc::clone(&tickets)));
    tasks.spawn(tasks::store_health_loop(
        Arc::clone(&tickets),
        Arc::clone(&metrics),
    ));
    if let Some(redis) = tickets.redis() {
        tasks.spawn(tasks::invalidation_loop(
            Arc::clone(&tickets),
            redis.subscriber(),
        ));
    }
    tasks.spawn(tasks::refresh_loop(
        Arc::clone(&tickets),
        Arc::clone(&gateway.refresher),
        config.sweeps,
        Arc::clone(&metrics),
    ));
    tasks.spawn(tasks::eviction_loop(
        Arc::clone(&tickets),
        config.sweeps,
        Arc::clone(&metrics),
    ));
    tasks.spawn(tasks::idle_upstreams_loop(Arc::clone(&proxy)));
    if let Some(interval) = notify::watchdog_interval() {
        tasks.spawn(tasks::watchdog_loop(interval));
    }
    if let Some(reload) = deps.reload.clone() {
        tasks.spawn(tasks::reload_loop(
            reload,
            config.tls.clone(),
            config.proxy.clone(),
            Arc::clone(&certificates),
            Arc::clone(&proxy),
        ));
    }
    if let Some(listener) = deps.metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "metrics at http://{address}/metrics");
        }
        tasks.spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&tickets),
        ));
    }
    tasks.spawn({
        let (path, tickets) = (config.admin_socket.clone(), Arc::clone(&tickets));
        let database = config.storage.database_path();
        async move {
            if let Err(error) = admin::serve_socket(path.clone(), tickets, database).await {
                tracing::error!(socket = %path.display(), %error, "admin socket stopped");
            }
        }
    });
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration");
    }
    notify::notify("READY=1");
    tracing::info!(
        listen = %listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |address| address.to_string()),
        public_url = %config.public_origin,
        issuer = %config.oidc.issuer,
        data_dir = %config.storage.data_dir.display(),
        "oidc-bff serving"
    );
    // Tell systemd as soon as the stop begins, before in-flight requests drain.
    let shutdown = async move {
        shutdown.await;
        notify::notify("STOPPING=1");
    };
    server::serve(
        listener,
        Arc::new(server_tls),
        gateway,
        config.limits,
        shutdown,
    )
    .await;

    tasks.stop();
    let _ = std::fs::remove_file(&config.admin_socket);
    let flushed = tickets.flush_touches().await?;
    tracing::info!(flushed, "stopped; pending last-access times written");
    Ok(())
}
