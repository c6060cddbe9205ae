//! The provider's HTTP client: hyper-util's pooled client over rustls, used for discovery, JWKS,
//! token and revocation calls. (Upstream APIs have their own connections: `proxy::upstream`.)
//!
//! It also adapts that client to openidconnect's `AsyncHttpClient` (so no reqwest). Provider
//! calls are bounded: a timeout per request and a cap on the response body, so a slow or
//! hostile provider cannot hold a handler or fill memory.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Largest provider response accepted (discovery documents and JWKS are a few KiB).
const MAX_PROVIDER_RESPONSE: usize = 1 << 20;

/// An outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// Connecting or sending failed.
    #[error("request to {host} failed: {source}")]
    Send {
        /// Host of the request.
        host: String,
        /// The client's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No complete answer in time.
    #[error("request to {host} timed out after {after:?}")]
    Timeout {
        /// Host of the request.
        host: String,
        /// The timeout.
        after: Duration,
    },
    /// The server answered with a 5xx status (an outage, not an answer).
    #[error("server error (HTTP {status})")]
    ServerError {
        /// The status code.
        status: u16,
    },
    /// The body was larger than allowed or broke off.
    #[error("response from {host} was too large or broke off")]
    Body {
        /// Host of the request.
        host: String,
    },
}

/// The pooled client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// A pooled keep-alive client for http and https (trusting what `tls` trusts, ALPN h2 and
/// http/1.1), dropping connections idle for `idle`.
pub fn pooled<B>(
    tls: rustls::ClientConfig,
    idle: Duration,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // No Nagle delay: a request head and a short body go out at once, as nginx's
    // `tcp_nodelay on` does towards upstreams.
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

impl HttpClient {
    /// A client trusting what `tls` trusts; `timeout` bounds each whole request.
    pub fn new(tls: rustls::ClientConfig, timeout: Duration) -> Self {
        Self {
            client: pooled(tls, Duration::from_secs(60)),
            timeout,
        }
    }

    /// Sends a request with a small body and collects the response (capped at 1 MiB).
    pub async fn execute(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpClientError> {
        let host = request.uri().host().unwrap_or("?").to_owned();
        let request = request.map(|body| Full::new(Bytes::from(body)));
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|source| HttpClientError::Send {
                        host: host.clone(),
                        source,
                    })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_PROVIDER_RESPONSE)
                .collect()
                .await
                .map_err(|_| HttpClientError::Body { host: host.clone() })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpClientError::Timeout {
                host: host.clone(),
                after: self.timeout,
            })?
    }
}
