//! The proxy's settings: `--route` flags, the `--frontend-url` dev route, the YARP file's
//! routes, and the limits every exchange runs under.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::route::{Access, TokenType};
use super::tunnel::TunnelLimits;
use super::yarp;
use super::{Cluster, Destination, Policy, RouteDef, Template, Transform, sort_routes};
use crate::policy::Policies;

/// One `--route "PREFIX=URL[,URL…] [key=value …]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Path prefix, matched on whole segments and removed before forwarding.
    pub prefix: String,
    /// Destinations of the route's cluster.
    pub destinations: Vec<Url>,
    /// `token=`: which token goes upstream (default `user`).
    pub token: TokenType,
    /// `policy=`: the authorization policy callers must satisfy.
    pub policy: Option<String>,
    /// `identity-headers=on`: the user's identity in `X-Auth-Request-*` headers.
    pub identity_headers: bool,
    /// `scope=A,B`: the client token's scope (space-separated here).
    pub client_scope: Option<String>,
    /// `resource=URI`: the audience of the token sent (RFC 8707).
    pub resource: Option<String>,
}

/// One space-separated piece of a `--route` value: the route itself, or one of its options.
/// (Clap splits the flag's value, and `OIDC_BFF_ROUTES`, on spaces; [`group_routes`] joins
/// each route with the options that follow it.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePiece {
    /// `PREFIX=URL[,URL…]`.
    Route(RouteSpec),
    /// `key=value`, for the route before it.
    Option(String, String),
}

/// Parses one piece of a `--route` value.
pub fn parse_route_piece(text: &str) -> Result<RoutePiece, String> {
    if text.starts_with('/') {
        return parse_route_base(text).map(RoutePiece::Route);
    }
    match text.split_once('=') {
        Some((key @ ("token" | "policy" | "identity-headers" | "scope" | "resource"), value)) => {
            Ok(RoutePiece::Option(key.to_owned(), value.to_owned()))
        }
        Some((key, _)) if !key.contains('/') => Err(format!(
            "{key:?} is not a route option (token=, policy=, scope=, resource=, identity-headers=)"
        )),
        _ => parse_route_base(text).map(RoutePiece::Route),
    }
}

/// Joins the pieces of every `--route` into routes with their options.
pub fn group_routes(pieces: Vec<RoutePiece>) -> Result<Vec<RouteSpec>, String> {
    let mut routes: Vec<RouteSpec> = Vec::new();
    for piece in pieces {
        match piece {
            RoutePiece::Route(route) => routes.push(route),
            RoutePiece::Option(key, value) => {
                let Some(route) = routes.last_mut() else {
                    return Err(format!("{key}={value} comes before any PREFIX=URL"));
                };
                let at = &route.prefix;
                match key.as_str() {
                    "token" => {
                        route.token = TokenType::parse_option(&value)
                            .map_err(|error| format!("{at}: {error}"))?;
                    }
                    "policy" if !value.is_empty() => route.policy = Some(value),
                    "resource" if !value.is_empty() => {
                        route.resource = Some(
                            resource_indicator(&value)
                                .map_err(|error| format!("{at}: resource={error}"))?,
                        );
                    }
                    "scope" if !value.is_empty() => {
                        route.client_scope = Some(
                            client_scope(value.split(','))
                                .map_err(|error| format!("{at}: scope={error}"))?,
                        );
                    }
                    "identity-headers" => {
                        route.identity_headers = match value.as_str() {
                            "on" => true,
                            "off" => false,
                            _ => {
                                return Err(format!(
                                    "{at}: identity-headers={value:?} is not on or off"
                                ));
                            }
                        };
                    }
                    _ => return Err(format!("{at}: {key}={value:?} needs a value")),
                }
            }
        }
    }
    Ok(routes)
}

/// Parses `"PREFIX=URL[,URL…] [key=value …]"`, a whole `--route` value.
pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let pieces = text
        .split_whitespace()
        .map(parse_route_piece)
        .collect::<Result<Vec<_>, _>>()?;
    match group_routes(pieces)?.as_slice() {
        [route] => Ok(route.clone()),
        _ => Err(format!("{text:?} must hold one PREFIX=URL[,URL…]")),
    }
}

/// Parses `PREFIX=URL[,URL…]`.
fn parse_route_base(text: &str) -> Result<RouteSpec, String> {
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
        token: TokenType::User,
        policy: None,
        identity_headers: false,
        client_scope: None,
        resource: None,
    })
}

/// An RFC 8707 resource indicator: an absolute URI without a fragment (§2). Kept as written:
/// it is compared with the token's audience as a string.
pub(super) fn resource_indicator(text: &str) -> Result<String, String> {
    let parsed = url::Url::parse(text).map_err(|_| format!("{text:?} is not an absolute URI"))?;
    if parsed.fragment().is_some() {
        return Err(format!("{text:?}: a resource indicator has no fragment"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} holds spaces or control characters"));
    }
    Ok(text.to_owned())
}

/// A route's `resource=` names the audience of the token it sends: a route that sends none
/// cannot have one.
pub(super) fn check_resource(token: TokenType, resource: Option<&String>) -> Result<(), String> {
    match resource {
        Some(resource) if token == TokenType::None => Err(format!(
            "a resource ({resource:?}) is the audience of the token sent, and token=none sends none"
        )),
        _ => Ok(()),
    }
}

/// A client token's scope from its scopes (each checked, RFC 6749 §3.3), space-separated.
pub fn client_scope<'a>(scopes: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let scopes: Vec<&str> = scopes.map(str::trim).filter(|s| !s.is_empty()).collect();
    if scopes.is_empty() {
        return Err("no scope".into());
    }
    for scope in &scopes {
        crate::policy::check_scope(scope)?;
    }
    Ok(scopes.join(" "))
}

/// A route's `scope=` is the scope of a client token: a route that never sends one cannot have
/// one (it would silently do nothing).
pub(super) fn check_client_scope(token: TokenType, scope: Option<&String>) -> Result<(), String> {
    match scope {
        Some(scope) if !token.sends_client_token() => Err(format!(
            "a scope ({scope:?}) is for client tokens: only with token=client or user-or-client"
        )),
        _ => Ok(()),
    }
}

/// Turns a `--route` flag into a route: everything below the prefix, prefix removed, a
/// round-robin cluster, the user's token unless the options say otherwise. Its `policy=` must
/// name one of `policies`.
pub fn route_from_flag(spec: &RouteSpec, policies: &Policies) -> Result<RouteDef, String> {
    check_client_scope(spec.token, spec.client_scope.as_ref())
        .and_then(|()| check_resource(spec.token, spec.resource.as_ref()))
        .map_err(|error| format!("{}: {error}", spec.prefix))?;
    let policy = match &spec.policy {
        Some(name) => Some(Arc::new(policies.get(name).cloned().ok_or_else(|| {
            format!("{}: policy={name} names no --policy", spec.prefix)
        })?)),
        None => None,
    };
    let destinations = spec
        .destinations
        .iter()
        .enumerate()
        .map(|(index, url)| {
            // Named by place, which keeps the flag's order; logged by address.
            Destination::new(format!("{index:04}"), url.clone()).labelled_by_address()
        })
        .collect();
    Ok(RouteDef {
        id: spec.prefix.as_str().into(),
        template: Template::prefix(&spec.prefix),
        methods: None,
        hosts: None,
        order: 0,
        access: Access {
            token: spec.token,
            policy,
            identity_headers: spec.identity_headers,
            client_scope: spec.client_scope.clone(),
            resource: spec.resource.clone(),
        },
        websockets: true,
        transforms: vec![Transform::PathRemovePrefix(spec.prefix.clone())],
        cluster: Arc::new(Cluster::new(
            spec.prefix.clone(),
            destinations,
            Policy::RoundRobin,
            None,
        )),
    })
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
        access: Access::anonymous(),
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
    /// The `--policy` flags.
    pub flag_policies: Policies,
    /// Every policy in force: the flags' and the YARP file's.
    pub policies: Arc<Policies>,
    /// The gateway has a client secret, so it can get client-credentials tokens.
    pub confidential_client: bool,
    /// `--allow`: the policy every user must satisfy to get a session.
    pub allow: Option<String>,
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
    /// matching. `policies` are every policy in force.
    /// Without a client secret (`confidential_client` false) no route may send a client token.
    pub fn assemble(
        flags: &[RouteSpec],
        file_routes: Vec<RouteDef>,
        frontend: Option<&Url>,
        policies: &Policies,
        confidential_client: bool,
    ) -> Result<Vec<RouteDef>, Vec<String>> {
        let mut errors = Vec::new();
        let mut routes: Vec<RouteDef> = Vec::new();
        for spec in flags {
            match route_from_flag(spec, policies) {
                Ok(route) => routes.push(route),
                Err(error) => errors.push(error),
            }
        }
        routes.extend(file_routes);
        if !confidential_client {
            for route in routes
                .iter()
                .filter(|r| r.access.token.sends_client_token())
            {
                errors.push(format!(
                    "{}: a client-credentials token needs a client secret (--client-secret-file, \
                     OIDC_BFF_CLIENT_SECRET or $CREDENTIALS_DIRECTORY/client-secret)",
                    route.id
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        routes.extend(frontend.cloned().map(frontend_route));
        sort_routes(&mut routes);
        Ok(routes)
    }

    /// Reads the YARP file again and assembles the routes and policies anew (SIGHUP).
    pub fn reload(&self) -> Result<(Vec<RouteDef>, Policies), Vec<String>> {
        let (file_routes, policies) = match &self.file {
            Some(path) => yarp::load(path, &self.flag_policies)?,
            None => (Vec::new(), self.flag_policies.clone()),
        };
        if let Some(name) = self
            .allow
            .as_ref()
            .filter(|name| policies.get(name).is_none())
        {
            return Err(vec![format!(
                "--allow {name}: the file no longer defines this policy"
            )]);
        }
        let routes = Self::assemble(
            &self.flag_routes,
            file_routes,
            self.frontend.as_ref(),
            &policies,
            self.confidential_client,
        )?;
        Ok((routes, policies))
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
    fn route_options_follow_their_route() {
        let pieces = "/api/public=http://h token=optional-user /api/admin=http://a policy=admins identity-headers=on /api/plain=http://p"
            .split(' ')
            .map(parse_route_piece)
            .collect::<Result<Vec<_>, _>>()
            .expect("pieces");
        let routes = group_routes(pieces).expect("routes");
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].token, TokenType::OptionalUser);
        assert_eq!(routes[1].policy.as_deref(), Some("admins"));
        assert!(routes[1].identity_headers);
        assert_eq!(routes[1].token, TokenType::User);
        assert_eq!(routes[2].token, TokenType::User);
        assert_eq!(routes[2].policy, None);

        for (bad, reason) in [
            ("token=none", "before any"),
            ("/a=http://h token=maybe", "not one of"),
            ("/a=http://h token=client scope=", "needs a value"),
            ("/a=http://h token=client scope=a\\b", "not a scope"),
            ("/a=http://h token=client scope=,", "no scope"),
            ("/a=http://h resource=orders", "not an absolute URI"),
            (
                "/a=http://h resource=https://orders.example/#x",
                "no fragment",
            ),
            ("/a=http://h identity-headers=yes", "on or off"),
            ("/a=http://h colour=blue", "not a route option"),
            ("/a=http://h policy=", "needs a value"),
        ] {
            let error = parse_route(bad).expect_err(bad);
            assert!(error.contains(reason), "{bad}: {error}");
        }
        let client =
            parse_route("/a=http://h scope=orders.read,orders.write token=client").expect("route");
        assert_eq!(client.token, TokenType::Client);
        assert_eq!(
            client.client_scope.as_deref(),
            Some("orders.read orders.write")
        );
        let user_with_scope = route_from_flag(
            &parse_route("/a=http://h scope=orders.read").expect("route"),
            &Policies::default(),
        )
        .expect_err("a scope on a user route");
        assert!(
            user_with_scope.contains("only with token=client"),
            "{user_with_scope}"
        );
        let bound = parse_route("/a=http://h resource=https://orders.example/api").expect("route");
        assert_eq!(
            bound.resource.as_deref(),
            Some("https://orders.example/api")
        );
        let none_with_resource = route_from_flag(
            &parse_route("/a=http://h token=none resource=https://orders.example").expect("route"),
            &Policies::default(),
        )
        .expect_err("a resource on a route that sends no token");
        assert!(
            none_with_resource.contains("token=none"),
            "{none_with_resource}"
        );
        let unknown = route_from_flag(
            &parse_route("/a=http://h policy=admins").expect("route"),
            &Policies::default(),
        )
        .expect_err("unknown policy");
        assert!(unknown.contains("names no --policy"), "{unknown}");
    }

    #[test]
    fn flag_routes_match_whole_segments_and_drop_the_prefix() {
        let route = route_from_flag(
            &parse_route("/api/OtherApi1=http://h").expect("route"),
            &Policies::default(),
        )
        .expect("route");
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
