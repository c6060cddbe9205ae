//! An upstream API for proxy tests: records what it receives (method, target, headers, body
//! size, counted while streaming) and answers as told (status, delay, cookies).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::certs::TestCerts;

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body_bytes: usize,
    pub version: http::Version,
}

#[derive(Clone, Default)]
struct Behaviour {
    status: Option<u16>,
    delay: Duration,
    set_cookies: Vec<String>,
}

/// The running upstream.
pub struct Upstream {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// Serves https with `certs`, offering `alpn` (e.g. `h2` and `http/1.1`).
    pub async fn start_tls(certs: &TestCerts, alpn: &[&[u8]]) -> Self {
        Self::launch(Some(certs.acceptor(alpn))).await
    }

    async fn launch(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!(
            "{scheme}://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            let behaviour = Arc::clone(&behaviour);
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let seen = Arc::clone(&seen);
                    let behaviour = Arc::clone(&behaviour);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            let behaviour = Arc::clone(&behaviour);
                            async move { Ok::<_, Infallible>(answer(request, &seen, &behaviour).await) }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match tls {
                            None => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                                    .await;
                            }
                            Some(tls) => {
                                let Ok(stream) = tls.accept(tcp).await else {
                                    return;
                                };
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            }
        });
        Self {
            url,
            seen,
            behaviour,
            task,
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Answer with this status from now on.
    pub fn set_status(&self, status: u16) {
        self.behaviour.lock().expect("behaviour").status = Some(status);
    }

    /// Wait this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour.lock().expect("behaviour").delay = delay;
    }

    /// Send these `Set-Cookie` headers.
    pub fn set_cookies(&self, cookies: &[&str]) {
        self.behaviour.lock().expect("behaviour").set_cookies =
            cookies.iter().map(|c| c.to_string()).collect();
    }
}

async fn answer(
    mut request: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    behaviour: &Mutex<Behaviour>,
) -> Response<Full<Bytes>> {
    // `Upgrade: websocket`: switch protocols, then send every byte back (a stand-in for a
    // WebSocket server, without the framing). Any other protocol is switched to as well, so a
    // test sees whether the gateway let the request ask.
    if let Some(protocol) = request.headers().get("upgrade").cloned() {
        let upgrade = hyper::upgrade::on(&mut request);
        seen.lock().expect("seen").push(Seen {
            method: request.method().to_string(),
            target: request.uri().to_string(),
            headers: request.headers().clone(),
            body_bytes: 0,
            version: request.version(),
        });
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(Full::new(Bytes::new()))
            .expect("101");
    }
    let (parts, mut body) = request.into_parts();
    // Count the body frame by frame, never holding it whole.
    let mut body_bytes = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len();
        }
    }
    seen.lock().expect("seen").push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_bytes,
        version: parts.version,
    });
    let behaviour = behaviour.lock().expect("behaviour").clone();
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let mut response = Response::builder()
        .status(behaviour.status.unwrap_or(200))
        .header("content-type", "application/json")
        .header("keep-alive", "timeout=5")
        .header("x-upstream", "echo");
    for cookie in &behaviour.set_cookies {
        response = response.header("set-cookie", cookie.as_str());
    }
    let body = serde_json::json!({"target": parts.uri.to_string(), "bodyBytes": body_bytes});
    response
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}
