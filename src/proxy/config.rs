//! The proxy's settings: `--route` flags, the `--frontend-url` dev route, the YARP file's
//! routes, and the limits every exchange runs under.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::tunnel::TunnelLimits;
use super::yarp;
use super::{Cluster, Destination, Policy, RouteDef, Template, Transform, sort_routes};

/// One `--route PREFIX=URL[,URL…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Path prefix, matched on whole segments and removed before forwarding.
    pub prefix: String,
    /// Destinations of the route's cluster.
    pub destinations: Vec<Url>,
}

/// Parses `PREFIX=URL[,URL…]`.
pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let (prefix, urls) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} must look like /prefix=http://host:port[,http://…]"))?;
    let prefix = prefix.trim_end_matches('/');
    if crate::path::normalize(prefix).ok().as_deref() != Some(prefix) {
        return Err(format!(
            "{prefix:?}: the prefix must be a plain path such as /api/orders"
        ));
    }
    let mut destinations = Vec::new();
    for url in urls.split(',') {
        let parsed = crate::urls::absolute(url.trim())?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(format!(
                "{url:?}: destinations must be http:// or https:// URLs"
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("{url:?}: a destination has no query or fragment"));
        }
        destinations.push(parsed);
    }
    Ok(RouteSpec {
        prefix: prefix.to_owned(),
        destinations,
    })
}

/// Turns a `--route` flag into a route: everything below the prefix, prefix removed, a
/// round-robin cluster, session required.
pub fn route_from_flag(spec: &RouteSpec) -> RouteDef {
    let destinations = spec
        .destinations
        .iter()
        .enumerate()
        .map(|(index, url)| {
            // Named by place, which keeps the flag's order; logged by address.
            Destination::new(format!("{index:04}"), url.clone()).labelled_by_address()
        })
        .collect();
    RouteDef {
        id: spec.prefix.clone(),
        template: Template::prefix(&spec.prefix),
        methods: None,
        hosts: None,
        order: 0,
        anonymous: false,
        websockets: true,
        transforms: vec![Transform::PathRemovePrefix(spec.prefix.clone())],
        cluster: Arc::new(Cluster::new(
            spec.prefix.clone(),
            destinations,
            Policy::RoundRobin,
            None,
        )),
    }
}

/// The development route of `--frontend-url`: every path no other route takes goes to the dev
/// server (e.g. `ng serve`), anonymous, without any token.
pub fn frontend_route(url: Url) -> RouteDef {
    RouteDef {
        id: "frontend".into(),
        template: Template::prefix("/"),
        methods: None,
        hosts: None,
        order: i32::MAX,
        anonymous: true,
        // The dev server's live reload is a WebSocket.
        websockets: true,
        transforms: Vec::new(),
        cluster: Arc::new(Cluster::new(
            "frontend".into(),
            vec![Destination::new("dev-server".into(), url)],
            Policy::FirstAlphabetical,
            None,
        )),
    }
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Every route, from `--route` flags and the `--proxy-config` file, in matching order.
    pub routes: Arc<Vec<RouteDef>>,
    /// The YARP file the routes came from, if any.
    pub file: Option<std::path::PathBuf>,
    /// The `--route` flags.
    pub flag_routes: Vec<RouteSpec>,
    /// The `--frontend-url` dev server.
    pub frontend: Option<Url>,
    /// Time allowed for the upstream to answer (headers), unless a cluster says otherwise.
    pub upstream_timeout: Duration,
    /// Largest request body forwarded.
    pub max_request_body: usize,
    /// The gateway's public origin: the only `Origin` accepted for upgrade requests.
    pub public_origin: String,
    /// WebSocket tunnels' idle timeout and longest life.
    pub tunnel_limits: TunnelLimits,
}

impl ProxyConfig {
    /// Combines flag routes, the routes of a YARP file and the dev-server route, ordered for
    /// matching.
    pub fn assemble(
        flags: &[RouteSpec],
        file_routes: Vec<RouteDef>,
        frontend: Option<&Url>,
    ) -> Vec<RouteDef> {
        let mut routes: Vec<RouteDef> = flags.iter().map(route_from_flag).collect();
        routes.extend(file_routes);
        routes.extend(frontend.cloned().map(frontend_route));
        sort_routes(&mut routes);
        routes
    }

    /// Reads the YARP file again and assembles the routes anew (SIGHUP).
    pub fn reload(&self) -> Result<Vec<RouteDef>, Vec<String>> {
        let file_routes = match &self.file {
            Some(path) => yarp::load(path)?,
            None => Vec::new(),
        };
        Ok(Self::assemble(
            &self.flag_routes,
            file_routes,
            self.frontend.as_ref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_reject_bad_values() {
        let spec = parse_route("/api/OtherApi1=http://127.0.0.1:7002,http://127.0.0.1:7003/v1")
            .expect("route");
        assert_eq!(spec.prefix, "/api/OtherApi1");
        assert_eq!(spec.destinations.len(), 2);
        assert_eq!(
            parse_route("/api/x/=http://h").expect("route").prefix,
            "/api/x"
        );
        for bad in [
            "api=http://h",
            "/api",
            "/api=ftp://h",
            "/api=http://h?x=1",
            "/a/../b=http://h",
            "/api=not a url",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flag_routes_match_whole_segments_and_drop_the_prefix() {
        let route = route_from_flag(&parse_route("/api/OtherApi1=http://h").expect("route"));
        let rewrite = |path: &str| {
            route.matches(&http::Method::GET, None, path).map(|values| {
                Transform::rewrite_path(&route.transforms, path, &values).into_owned()
            })
        };
        assert_eq!(
            rewrite("/api/OtherApi1/products").as_deref(),
            Some("/products")
        );
        assert_eq!(rewrite("/api/OtherApi1").as_deref(), Some(""));
        assert_eq!(rewrite("/api/OtherApi10"), None);
        assert_eq!(rewrite("/api/OtherApi"), None);
    }

    #[test]
    fn the_destination_base_path_is_kept_and_the_query_passed() {
        let join = |destination: &str, rest: &str| {
            Destination::new("d".into(), Url::parse(destination).expect("url"))
                .uri_for(rest, Some("x=1"))
                .expect("uri")
                .to_string()
        };
        assert_eq!(join("http://h:7002", "/products"), "/products?x=1");
        assert_eq!(join("http://h:7002/v1", "/products"), "/v1/products?x=1");
        assert_eq!(join("http://h:7002/v1/", "/products"), "/v1/products?x=1");
        assert_eq!(join("http://h:7002", ""), "/?x=1");
        assert_eq!(join("http://h:7002/v1", ""), "/v1?x=1");
        assert_eq!(join("https://[::1]:8443", "/a"), "/a?x=1");
    }
}
