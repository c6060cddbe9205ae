//! A minimal browser for integration tests: a cookie jar for the gateway's origin, TLS trusting
//! the test CA, and manual redirect following.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

use super::certs::TestCerts;

/// One response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `Location` header.
    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    }

    /// The JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// A cookie-keeping client.
pub struct Browser {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    gateway: String,
    pub jar: BTreeMap<String, String>,
    /// Every response the gateway sent this browser (to check that no token leaks).
    pub seen: Vec<Reply>,
}

impl Browser {
    pub fn new(gateway: &str, certs: &TestCerts) -> Self {
        Self::with_ca(gateway, certs.ca_der.clone())
    }

    /// A browser trusting `ca`.
    pub fn with_ca(gateway: &str, ca: rustls_pki_types::CertificateDer<'static>) -> Self {
        Self::with_cas(gateway, vec![ca])
    }

    /// A browser trusting several CAs (the gateway's and an https provider's).
    pub fn with_cas(gateway: &str, cas: Vec<rustls_pki_types::CertificateDer<'static>>) -> Self {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).expect("CA");
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector({
                // As a browser does: a request written in several pieces is not held back
                // waiting for the acknowledgement of the first (40 ms on loopback).
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http
            });
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            gateway: gateway.to_owned(),
            jar: BTreeMap::new(),
            seen: Vec::new(),
        }
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with('/') {
            format!("{}{url}", self.gateway)
        } else {
            url.to_owned()
        }
    }

    /// Sends a request; cookies go only to the gateway, and its Set-Cookie headers are kept.
    pub async fn request(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let url = self.absolute(url);
        let to_gateway = url.starts_with(&self.gateway);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(cookie) = self.cookie_header(to_gateway) {
            builder = builder.header("cookie", cookie);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        let response = self.client.request(request).await.expect("send");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let reply = Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        if to_gateway {
            for cookie in reply.set_cookies() {
                self.store_cookie(&cookie);
            }
            self.seen.push(Reply {
                status: reply.status,
                headers: reply.headers.clone(),
                body: reply.body.clone(),
            });
        }
        reply
    }

    /// The Cookie header for a request: the jar's cookies, for the gateway only.
    fn cookie_header(&self, to_gateway: bool) -> Option<String> {
        if !to_gateway || self.jar.is_empty() {
            return None;
        }
        Some(self.cookies())
    }

    /// The jar as a Cookie header value, for requests written by hand.
    pub fn cookies(&self) -> String {
        self.jar
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn store_cookie(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let expired = parts.any(|attribute| attribute.trim() == "Max-Age=0");
        if expired {
            self.jar.remove(name.trim());
        } else {
            self.jar
                .insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }

    /// GET that reports a failed connection as `None` instead of panicking.
    pub async fn try_get(&mut self, url: &str) -> Option<u16> {
        let request = Request::builder()
            .uri(self.absolute(url))
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = self.client.request(request).await.ok()?;
        Some(response.status().as_u16())
    }

    /// Polls `/healthz` until it answers 200 (at most 5 s); for gateways started as processes.
    pub async fn wait_healthy(&mut self) {
        for _ in 0..100 {
            if self.try_get("/healthz").await == Some(200) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the gateway did not become healthy");
    }

    /// The whole login without panics: the session cookie when the gateway acknowledged it.
    pub async fn try_login(&mut self) -> Option<String> {
        let login = self.try_request("/login").await?;
        let authorize = self.try_request(&login).await?;
        self.try_request(&authorize).await?;
        self.jar.get("__Host-bff").cloned()
    }

    /// GET following nothing; returns the Location, keeping cookies. `None` on any failure.
    async fn try_request(&mut self, url: &str) -> Option<String> {
        let url = self.absolute(url);
        let to_gateway = url.starts_with(&self.gateway);
        let mut builder = Request::builder().uri(&url);
        if let Some(cookie) = self.cookie_header(to_gateway) {
            builder = builder.header("cookie", cookie);
        }
        let response = self
            .client
            .request(builder.body(Full::new(Bytes::new())).ok()?)
            .await
            .ok()?;
        if response.status() != 302 {
            return None;
        }
        if to_gateway {
            let cookies: Vec<String> = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            for cookie in cookies {
                self.store_cookie(&cookie);
            }
        }
        let location = response
            .headers()
            .get("location")?
            .to_str()
            .ok()?
            .to_owned();
        // The body is empty; finishing it keeps the connection reusable.
        let _ = response.into_body().collect().await;
        Some(location)
    }

    /// GET with extra headers.
    pub async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, url, headers, b"").await
    }

    /// `/api/isAuth` as a boolean.
    pub async fn is_auth(&mut self) -> bool {
        let reply = self.get("/api/isAuth", &[]).await;
        assert_eq!(reply.status, 200);
        reply.json().as_bool().expect("boolean")
    }

    /// `/api/user` with the CSRF header.
    pub async fn user(&mut self) -> Reply {
        self.get("/api/user", &[("x-csrf", "1")]).await
    }

    /// Starts a login and returns the provider's authorize URL (not yet followed).
    pub async fn start_login(&mut self, return_url: &str) -> String {
        let reply = self
            .get(&format!("/login?returnUrl={}", urlencode(return_url)), &[])
            .await;
        assert_eq!(reply.status, 302, "login: {}", reply.body);
        reply.location()
    }

    /// Follows an authorize URL at the provider and returns the callback URL it redirects to.
    pub async fn authorize(&mut self, authorize_url: &str) -> String {
        let reply = self.get(authorize_url, &[]).await;
        assert_eq!(reply.status, 302, "authorize: {}", reply.body);
        reply.location()
    }

    /// The whole login: returns the gateway's answer to the callback.
    pub async fn login(&mut self, return_url: &str) -> Reply {
        let authorize = self.start_login(return_url).await;
        let callback = self.authorize(&authorize).await;
        self.get(&callback, &[]).await
    }

    /// Logs in and asserts that it worked.
    pub async fn login_ok(&mut self) {
        let reply = self.login("/").await;
        assert_eq!(reply.status, 302, "callback failed: {}", reply.body);
        assert!(self.is_auth().await, "isAuth after login");
    }
}

/// Percent-encodes a query value.
pub fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
