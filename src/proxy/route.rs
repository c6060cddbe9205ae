//! Routes and clusters, the proxy's model: which requests a route takes (path template,
//! methods, hosts), how it rewrites them (transforms), whether it needs a session, and which
//! destination of its cluster gets each call (balancing policy and passive health).
//!
//! Both `--route` flags and YARP JSON (`yarp.rs`) become these values; nothing here does I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use http::Method;
use http::header::{HeaderName, HeaderValue};
use url::Url;

use super::upstream::{Address, Connections};

/// Whether matching a template collects the route values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Values,
    Nothing,
}

/// One segment of a route template (ASP.NET routing syntax, as YARP uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches itself, case-insensitively.
    Literal(String),
    /// `{name}` or `{name:constraint}` or `{name?}`: one segment.
    Param {
        name: String,
        constraint: Option<Constraint>,
        optional: bool,
    },
    /// `{**name}` or `{*name}`: the rest of the path, possibly empty.
    CatchAll(String),
}

/// The route constraints supported in templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Constraint {
    Int,
    Long,
    Guid,
    Alpha,
    Bool,
}

impl Constraint {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "int" => Self::Int,
            "long" => Self::Long,
            "guid" => Self::Guid,
            "alpha" => Self::Alpha,
            "bool" => Self::Bool,
            _ => return None,
        })
    }

    fn accepts(self, value: &str) -> bool {
        match self {
            Self::Int => value.parse::<i32>().is_ok(),
            Self::Long => value.parse::<i64>().is_ok(),
            Self::Guid => {
                let hex: String = value.chars().filter(|c| *c != '-').collect();
                hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
            }
            Self::Alpha => !value.is_empty() && value.chars().all(|c| c.is_ascii_alphabetic()),
            Self::Bool => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        }
    }
}

/// A parsed route template such as `/sender/{**catch-all}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Values captured by a template match, by parameter name.
pub type RouteValues = HashMap<String, String>;

/// The non-empty segments of a path (templates and request paths alike). Every request is
/// matched through this: a byte scan for `/` instead of `str::split`'s general pattern search,
/// which costs more on short paths.
#[derive(Clone)]
struct Segments<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let end = self
                .rest
                .bytes()
                .position(|byte| byte == b'/')
                .unwrap_or(self.rest.len());
            // `/` is ASCII: both cuts fall on character boundaries.
            let (segment, rest) = self.rest.split_at(end);
            self.rest = rest.get(1..).unwrap_or_default();
            if !segment.is_empty() {
                return Some(segment);
            }
        }
    }
}

impl Template {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with /"));
        }
        let parts: Vec<&str> = Segments { rest: &text[1..] }.collect();
        let mut segments = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let last = index + 1 == parts.len();
            let segment = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if let Some(name) = inner.strip_prefix("**").or_else(|| inner.strip_prefix('*')) {
                    if !last {
                        return Err(format!("{text:?}: a catch-all must be the last segment"));
                    }
                    Segment::CatchAll(valid_name(name, text)?.to_owned())
                } else {
                    let (inner, optional) = match inner.strip_suffix('?') {
                        Some(inner) => (inner, true),
                        None => (inner, false),
                    };
                    if optional && !last {
                        return Err(format!("{text:?}: only the last parameter can be optional"));
                    }
                    let (name, constraint) = match inner.split_once(':') {
                        Some((name, constraint)) => (
                            name,
                            Some(Constraint::parse(constraint).ok_or_else(|| {
                                format!(
                                    "{text:?}: constraint {constraint:?} is not supported \
                                     (int, long, guid, alpha, bool)"
                                )
                            })?),
                        ),
                        None => (inner, None),
                    };
                    Segment::Param {
                        name: valid_name(name, text)?.to_owned(),
                        constraint,
                        optional,
                    }
                }
            } else if part.contains(['{', '}']) {
                return Err(format!("{text:?}: a parameter must fill its whole segment"));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        Ok(Self { segments })
    }

    /// A template matching `prefix` and everything below it (what `--route` means).
    pub fn prefix(prefix: &str) -> Self {
        let mut segments: Vec<Segment> = Segments { rest: prefix }
            .map(|part| Segment::Literal(part.to_owned()))
            .collect();
        segments.push(Segment::CatchAll("rest".into()));
        Self { segments }
    }

    /// The values captured when `path` matches.
    pub fn matches(&self, path: &str) -> Option<RouteValues> {
        self.matches_capturing(path, Capture::Values)
    }

    /// Like [`Template::matches`]; with [`Capture::Nothing`] the values are left out (a route
    /// whose transforms never read them matches without allocating).
    fn matches_capturing(&self, path: &str, capture: Capture) -> Option<RouteValues> {
        let capture = capture == Capture::Values;
        let mut parts = Segments { rest: path };
        // Parts taken so far; a missing optional parameter takes none.
        let mut taken = 0;
        let mut values = RouteValues::new();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(literal) => {
                    if !parts.next()?.eq_ignore_ascii_case(literal) {
                        return None;
                    }
                    taken += 1;
                }
                Segment::Param {
                    name,
                    constraint,
                    optional,
                } => match parts.next() {
                    Some(value) => {
                        if constraint.is_some_and(|constraint| !constraint.accepts(value)) {
                            return None;
                        }
                        taken += 1;
                        if capture {
                            values.insert(name.clone(), value.to_owned());
                        }
                    }
                    None if *optional => {}
                    None => return None,
                },
                Segment::CatchAll(name) => {
                    // The rest starts at this segment's position, which a skipped optional
                    // parameter can put past the end of the path.
                    if index > taken + parts.clone().count() {
                        return None;
                    }
                    if capture {
                        values.insert(name.clone(), parts.collect::<Vec<_>>().join("/"));
                    }
                    return Some(values);
                }
            }
        }
        let total = taken + parts.count();
        (total == self.segments.len()
            || (total + 1 == self.segments.len()
                && matches!(
                    self.segments.last(),
                    Some(Segment::Param { optional: true, .. })
                )))
        .then_some(values)
    }

    /// Fills the template with route values (for the `PathPattern` transform).
    pub fn render(&self, values: &RouteValues) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            let part = match segment {
                Segment::Literal(literal) => literal.as_str(),
                Segment::Param { name, .. } | Segment::CatchAll(name) => {
                    values.get(name).map_or("", String::as_str)
                }
            };
            if !part.is_empty() {
                path.push('/');
                path.push_str(part);
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    /// Number of leading literal segments (more specific routes win among equal `Order`).
    fn literal_prefix(&self) -> usize {
        self.segments
            .iter()
            .take_while(|segment| matches!(segment, Segment::Literal(_)))
            .count()
    }
}

fn valid_name<'a>(name: &'a str, template: &str) -> Result<&'a str, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("{template:?}: bad parameter name {name:?}"));
    }
    Ok(name)
}

/// A `Match.Hosts` entry: `example.com`, `example.com:8443` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// A host pattern, compared case-insensitively.
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_ascii_lowercase())
    }

    fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let candidates = [host.as_str(), host.split(':').next().unwrap_or_default()];
        candidates
            .iter()
            .any(|host| match self.0.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => *host == self.0,
            })
    }
}

/// When a response transform applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Status below 400 (YARP's default).
    Success,
    /// Always.
    Always,
    /// Status 400 and above.
    Failure,
}

impl When {
    fn applies(self, status: u16) -> bool {
        match self {
            When::Success => status < 400,
            When::Always => true,
            When::Failure => status >= 400,
        }
    }
}

/// A request or response rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transform {
    /// Removes a leading path prefix when present.
    PathRemovePrefix(String),
    /// Adds a path prefix.
    PathPrefix(String),
    /// Replaces the path.
    PathSet(String),
    /// Replaces the path with a template filled from the route values.
    PathPattern(Template),
    /// Sets a request header.
    RequestHeaderSet(HeaderName, HeaderValue),
    /// Appends a request header.
    RequestHeaderAppend(HeaderName, HeaderValue),
    /// Removes a request header.
    RequestHeaderRemove(HeaderName),
    /// Forwards the browser's `Host` instead of the destination's.
    RequestHeaderOriginalHost(bool),
    /// Sets a response header.
    ResponseHeaderSet(HeaderName, HeaderValue, When),
    /// Appends a response header.
    ResponseHeaderAppend(HeaderName, HeaderValue, When),
    /// Removes a response header.
    ResponseHeaderRemove(HeaderName, When),
}

impl Transform {
    /// Applies the path transforms in order to `path`.
    /// (Borrowed from `path` when only prefixes are removed, the usual case.)
    pub fn rewrite_path<'a>(
        transforms: &[Transform],
        path: &'a str,
        values: &RouteValues,
    ) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        let mut path = Cow::Borrowed(path);
        for transform in transforms {
            match transform {
                Transform::PathRemovePrefix(prefix) => {
                    // Case ignored, as matching ignores it: `/API/X/y` matched `/api/x`.
                    let start = crate::path::strip_prefix_ignore_case(&path, prefix)
                        .map(|rest| path.len() - rest.len());
                    if let Some(start) = start {
                        path = match path {
                            Cow::Borrowed(path) => Cow::Borrowed(&path[start..]),
                            Cow::Owned(mut path) => {
                                path.drain(..start);
                                Cow::Owned(path)
                            }
                        };
                    }
                }
                Transform::PathPrefix(prefix) => path = Cow::Owned(format!("{prefix}{path}")),
                Transform::PathSet(set) => path = Cow::Owned(set.clone()),
                Transform::PathPattern(template) => path = Cow::Owned(template.render(values)),
                _ => {}
            }
        }
        path
    }

    /// Applies the response transforms for `status` to the headers.
    pub fn rewrite_response(transforms: &[Transform], status: u16, headers: &mut http::HeaderMap) {
        for transform in transforms {
            match transform {
                Transform::ResponseHeaderSet(name, value, when) if when.applies(status) => {
                    headers.insert(name.clone(), value.clone());
                }
                Transform::ResponseHeaderAppend(name, value, when) if when.applies(status) => {
                    headers.append(name.clone(), value.clone());
                }
                Transform::ResponseHeaderRemove(name, when) if when.applies(status) => {
                    headers.remove(name);
                }
                _ => {}
            }
        }
    }
}

/// How a cluster picks a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// In turn.
    RoundRobin,
    /// The less busy of two picked at random (YARP's default).
    PowerOfTwoChoices,
    /// At random.
    Random,
    /// The one with the fewest requests in flight.
    LeastRequests,
    /// The first by destination name (a primary with fall-backs).
    FirstAlphabetical,
}

/// One upstream address.
#[derive(Debug)]
pub struct Destination {
    /// Name from the configuration.
    pub name: String,
    /// What the access log calls it: its YARP name, or for a `--route` destination (whose
    /// name is only its place in the flag) the URL's host and port.
    pub label: Arc<str>,
    /// Base URL.
    pub url: Url,
    /// Where to connect, parsed once.
    pub(crate) address: Address,
    /// Its keep-alive connections.
    pub(crate) connections: Arc<Connections>,
    /// The URL's path without a trailing slash: what every upstream path starts with.
    base_path: String,
    in_flight: AtomicUsize,
    unhealthy_until_ms: AtomicU64,
}

impl Destination {
    /// A destination.
    pub fn new(name: String, url: Url) -> Self {
        Self {
            label: name.as_str().into(),
            name,
            address: Address::new(&url),
            connections: Arc::default(),
            base_path: url.path().trim_end_matches('/').to_owned(),
            url,
            in_flight: AtomicUsize::new(0),
            unhealthy_until_ms: AtomicU64::new(0),
        }
    }

    /// The same destination, logged as its URL's host and port.
    pub fn labelled_by_address(mut self) -> Self {
        let host = self.url.host_str().unwrap_or_default();
        self.label = match self.url.port_or_known_default() {
            Some(port) => format!("{host}:{port}").into(),
            None => host.into(),
        };
        self
    }

    /// The upstream request target (origin form: path and query) for `rest` (the path after
    /// the route's prefix, starting with `/` or empty) and the original query.
    pub fn uri_for(
        &self,
        rest: &str,
        query: Option<&str>,
    ) -> Result<http::Uri, http::uri::InvalidUri> {
        let mut text = String::with_capacity(
            self.base_path.len() + rest.len() + query.map_or(0, |query| query.len() + 1) + 1,
        );
        text.push_str(&self.base_path);
        text.push_str(rest);
        if text.is_empty() {
            // No base path and nothing after the prefix: the root.
            text.push('/');
        }
        if let Some(query) = query {
            text.push('?');
            text.push_str(query);
        }
        http::Uri::try_from(text)
    }
}

/// Counts a request in flight at a destination until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Destination);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A group of interchangeable destinations.
#[derive(Debug)]
pub struct Cluster {
    /// Name from the configuration.
    pub id: String,
    destinations: Vec<Destination>,
    policy: Policy,
    /// Overrides `--upstream-timeout` (YARP's `HttpRequest.ActivityTimeout`).
    pub timeout: Option<Duration>,
    /// How long a destination that failed is skipped.
    pub reactivation: Duration,
    next: AtomicUsize,
    epoch: Instant,
}

impl Cluster {
    /// A cluster; destinations are kept sorted by name.
    pub fn new(
        id: String,
        mut destinations: Vec<Destination>,
        policy: Policy,
        timeout: Option<Duration>,
    ) -> Self {
        destinations.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            id,
            destinations,
            policy,
            timeout,
            reactivation: Duration::from_secs(30),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// The destinations, sorted by name.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Picks a destination by the cluster's policy, skipping ones marked failed while any other
    /// is available, and counts the request in flight there.
    pub fn pick(&self) -> (&Destination, InFlight<'_>) {
        let now = self.now_ms();
        let healthy = |destination: &Destination| {
            destination.unhealthy_until_ms.load(Ordering::Relaxed) <= now
        };
        // Usually every destination is healthy: then they are the candidates as they are, and
        // nothing is allocated. When none is healthy, all are tried again.
        let subset: Option<Vec<&Destination>> =
            (!self.destinations.iter().all(healthy)).then(|| {
                self.destinations
                    .iter()
                    .filter(|destination| healthy(destination))
                    .collect()
            });
        let subset = subset.filter(|subset| !subset.is_empty());
        let count = subset.as_ref().map_or(self.destinations.len(), Vec::len);
        let at = |index: usize| -> &Destination {
            match &subset {
                Some(subset) => subset[index],
                None => &self.destinations[index],
            }
        };
        let random = |bound: usize| -> usize {
            let bytes: [u8; 8] = crate::seal::random_bytes();
            (u64::from_le_bytes(bytes) % bound as u64) as usize
        };
        let load = |destination: &&Destination| destination.in_flight.load(Ordering::Relaxed);
        let chosen = match self.policy {
            Policy::RoundRobin => at(self.next.fetch_add(1, Ordering::Relaxed) % count),
            Policy::Random => at(random(count)),
            Policy::PowerOfTwoChoices => {
                let first = at(random(count));
                let second = at(random(count));
                if load(&second) < load(&first) {
                    second
                } else {
                    first
                }
            }
            Policy::LeastRequests => (0..count).map(at).min_by_key(load).unwrap_or(at(0)),
            Policy::FirstAlphabetical => at(0),
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        (chosen, InFlight(chosen))
    }

    /// Marks a destination failed (unreachable or timed out): skipped for a while.
    pub fn mark_failed(&self, destination: &Destination) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(self.reactivation.as_millis()).unwrap_or(u64::MAX));
        destination
            .unhealthy_until_ms
            .store(until, Ordering::Relaxed);
    }
}

/// Which token a route's upstream gets (`--route … token=`, YARP `Duende.Bff.Yarp.TokenType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// The user's access token; a session is required (the default).
    User,
    /// The user's access token when signed in; else no token, and no 401.
    OptionalUser,
    /// The gateway's own client-credentials token; no session needed.
    Client,
    /// The user's access token when signed in; else the gateway's client token.
    UserOrClient,
    /// No token and no session needed (YARP `AuthorizationPolicy: anonymous`).
    None,
}

impl TokenType {
    /// The `--route` option value.
    pub fn parse_option(value: &str) -> Result<Self, String> {
        match value {
            "user" => Ok(Self::User),
            "optional-user" => Ok(Self::OptionalUser),
            "client" => Ok(Self::Client),
            "user-or-client" => Ok(Self::UserOrClient),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "token={value:?} is not one of user, optional-user, client, user-or-client, none"
            )),
        }
    }

    /// Whether a signed-in caller's own access token goes upstream.
    pub fn sends_user_token(self) -> bool {
        matches!(self, Self::User | Self::OptionalUser | Self::UserOrClient)
    }

    /// Whether the gateway's client token may go upstream.
    pub fn sends_client_token(self) -> bool {
        matches!(self, Self::Client | Self::UserOrClient)
    }
}

/// Who may call a route, and what of the user's its upstream gets.
#[derive(Debug, Clone)]
pub struct Access {
    /// Which token goes upstream.
    pub token: TokenType,
    /// The authorization policy the caller must satisfy; a policy needs a session whatever
    /// the token type.
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// Send `X-Auth-Request-User`, `-Email`, `-Preferred-Username` and `-Groups` from the
    /// signed-in user's claims.
    pub identity_headers: bool,
    /// The scope of the client token (space-separated); `None`: `--client-scopes`.
    pub client_scope: Option<String>,
    /// RFC 8707 resource indicator: the token sent is one whose audience is this resource
    /// alone (asked for with the session's refresh token, or in the client grant).
    pub resource: Option<String>,
}

impl Access {
    /// The user's token, a session required, no policy, no identity headers.
    pub fn user() -> Self {
        Self {
            token: TokenType::User,
            policy: None,
            identity_headers: false,
            client_scope: None,
            resource: None,
        }
    }

    /// No token and no session.
    pub fn anonymous() -> Self {
        Self {
            token: TokenType::None,
            ..Self::user()
        }
    }

    /// Whether a call needs a session.
    pub fn needs_session(&self) -> bool {
        self.token == TokenType::User || self.policy.is_some()
    }

    /// Whether the route reads the session at all: it sends the user's token or identity, or
    /// checks a policy. Such a route sends something of the user's whenever one is signed in,
    /// so the CSRF check applies then.
    pub fn reads_session(&self) -> bool {
        self.token.sends_user_token() || self.identity_headers || self.needs_session()
    }
}

/// A route: what it matches, how it rewrites, who may use it, where it goes.
#[derive(Debug)]
pub struct RouteDef {
    /// Name from the configuration (`--route` routes are named by their prefix).
    pub id: Arc<str>,
    /// The path template.
    pub template: Template,
    /// Allowed methods; all when `None`.
    pub methods: Option<Vec<Method>>,
    /// Allowed hosts; all when `None`.
    pub hosts: Option<Vec<HostPattern>>,
    /// Lower goes first.
    pub order: i32,
    /// Who may call the route and which token its upstream gets.
    pub access: Access,
    /// Whether WebSocket handshakes become tunnels (YARP `Metadata`
    /// `"oidc-bff.WebSockets": "false"` turns it off).
    pub websockets: bool,
    /// Rewrites, in order.
    pub transforms: Vec<Transform>,
    /// Where the calls go.
    pub cluster: std::sync::Arc<Cluster>,
}

impl RouteDef {
    /// The route values when this route takes the request.
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> Option<RouteValues> {
        if self
            .methods
            .as_ref()
            .is_some_and(|methods| !methods.contains(method))
        {
            return None;
        }
        if let Some(hosts) = &self.hosts {
            let host = host?;
            if !hosts.iter().any(|pattern| pattern.matches(host)) {
                return None;
            }
        }
        // Only a path pattern reads the route values.
        let capture = if self
            .transforms
            .iter()
            .any(|transform| matches!(transform, Transform::PathPattern(_)))
        {
            Capture::Values
        } else {
            Capture::Nothing
        };
        self.template.matches_capturing(path, capture)
    }
}

/// Orders routes as YARP does: by `Order`, then the more specific template first.
pub fn sort_routes(routes: &mut [RouteDef]) {
    routes.sort_by_key(|route| {
        (
            route.order,
            std::cmp::Reverse(route.template.literal_prefix()),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_the_non_empty_parts_between_slashes() {
        for path in [
            "",
            "/",
            "//",
            "/api",
            "/api/",
            "/api//OtherApi1///products/",
            "api/x",
            "/d\u{e9}j\u{e0}/vu/\u{1f600}",
        ] {
            let expected: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
            assert_eq!(
                Segments { rest: path }.collect::<Vec<_>>(),
                expected,
                "{path}"
            );
        }
    }

    #[test]
    fn matching_without_capturing_decides_the_same() {
        let cases = [
            (
                "/sender/{**catch-all}",
                vec!["/sender", "/sender/a/b", "/senders/a", "/"],
            ),
            ("/a/{id?}", vec!["/a", "/a/5", "/a/5/6", "/b/5"]),
            ("/a/{x}/{y?}", vec!["/a", "/a/1", "/a/1/2", "/a/1/2/3"]),
            (
                "/api/{id:int}/items",
                vec!["/api/7/items", "/api/x/items", "/api/7/items/"],
            ),
            (
                "/API/OtherApi1/{**rest}",
                vec!["/api/otherapi1/products", "/api/OtherApi10/x"],
            ),
        ];
        for (template, paths) in cases {
            let parsed = Template::parse(template).expect("template");
            for path in paths {
                assert_eq!(
                    parsed.matches_capturing(path, Capture::Nothing).is_some(),
                    parsed.matches(path).is_some(),
                    "{template} against {path}"
                );
            }
        }
        let parsed = Template::parse("/a/{x}/{y?}").expect("template");
        assert!(parsed.matches("/a").is_none());
        assert!(parsed.matches("/a/1").is_some());
        assert!(parsed.matches("/a/1/2/3").is_none());
        let parsed = Template::parse("/a/{**rest}").expect("template");
        assert_eq!(parsed.matches("/a").expect("match")["rest"], "");
        assert_eq!(parsed.matches("/a/x//y/").expect("match")["rest"], "x/y");
        assert!(
            Template::parse("/sender/{**catch-all}")
                .expect("template")
                .matches_capturing("/sender/a/b", Capture::Nothing)
                .expect("match")
                .is_empty(),
            "nothing captured when not asked"
        );
    }

    #[test]
    fn templates_match_like_asp_net_routes() {
        let catch_all = Template::parse("/sender/{**catch-all}").expect("template");
        assert_eq!(
            catch_all.matches("/sender/a/b").expect("match")["catch-all"],
            "a/b"
        );
        assert_eq!(
            catch_all.matches("/sender").expect("match")["catch-all"],
            ""
        );
        assert_eq!(
            catch_all.matches("/SENDER/x").expect("match")["catch-all"],
            "x"
        );
        assert!(catch_all.matches("/senders/x").is_none());

        let param = Template::parse("/orders/{id:int}/{part?}").expect("template");
        assert_eq!(param.matches("/orders/42").expect("match")["id"], "42");
        assert_eq!(
            param.matches("/orders/42/lines").expect("match")["part"],
            "lines"
        );
        assert!(param.matches("/orders/abc").is_none());
        assert!(param.matches("/orders/42/lines/x").is_none());

        for bad in [
            "sender",
            "/a/{**x}/b",
            "/a/{id:regex(x)}",
            "/a/x{id}",
            "/a/{}",
            "/a/{x?}/b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_transforms_apply_in_order() {
        let template = Template::parse("/sender/{**catch-all}").expect("template");
        let values = template.matches("/sender/x/y").expect("match");
        let rewrite =
            |transforms: &[Transform]| Transform::rewrite_path(transforms, "/sender/x/y", &values);
        assert_eq!(
            rewrite(&[Transform::PathRemovePrefix("/sender".into())]),
            "/x/y"
        );
        assert_eq!(
            rewrite(&[Transform::PathRemovePrefix("/send".into())]),
            "/sender/x/y"
        );
        assert_eq!(
            rewrite(&[Transform::PathPrefix("/v2".into())]),
            "/v2/sender/x/y"
        );
        assert_eq!(rewrite(&[Transform::PathSet("/fixed".into())]), "/fixed");
        let pattern = Template::parse("/api/{**catch-all}").expect("template");
        assert_eq!(rewrite(&[Transform::PathPattern(pattern)]), "/api/x/y");
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard() {
        assert!(HostPattern::new("App.example.com").matches("app.example.com:8443"));
        assert!(HostPattern::new("*.example.com").matches("a.example.com"));
        assert!(!HostPattern::new("*.example.com").matches("example.com"));
        assert!(!HostPattern::new("app.example.com").matches("evil.com"));
    }

    fn cluster(policy: Policy, names: &[&str]) -> Cluster {
        Cluster::new(
            "c".into(),
            names
                .iter()
                .map(|name| {
                    Destination::new(
                        (*name).to_owned(),
                        Url::parse(&format!("http://{name}.test")).expect("url"),
                    )
                })
                .collect(),
            policy,
            None,
        )
    }

    #[test]
    fn policies_pick_as_named() {
        let round = cluster(Policy::RoundRobin, &["a", "b"]);
        let picks: Vec<String> = (0..4).map(|_| round.pick().0.name.clone()).collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);

        let first = cluster(Policy::FirstAlphabetical, &["b", "a"]);
        assert_eq!(first.pick().0.name, "a");

        let least = cluster(Policy::LeastRequests, &["a", "b"]);
        let (busy, _held) = least.pick();
        assert_eq!(busy.name, "a");
        assert_eq!(least.pick().0.name, "b", "a has one in flight");

        let random = cluster(Policy::Random, &["a", "b", "c"]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(random.pick().0.name.clone());
        }
        assert_eq!(seen.len(), 3);

        let two = cluster(Policy::PowerOfTwoChoices, &["a", "b"]);
        let (_, held_a) = two.pick();
        let (_, held_b) = two.pick();
        drop((held_a, held_b));
        assert!(
            two.destinations
                .iter()
                .all(|d| d.in_flight.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn a_failed_destination_is_skipped_while_another_is_healthy() {
        let round = cluster(Policy::RoundRobin, &["a", "b"]);
        let a = &round.destinations[0];
        round.mark_failed(a);
        for _ in 0..4 {
            assert_eq!(round.pick().0.name, "b");
        }
        round.mark_failed(&round.destinations[1]);
        let _ = round.pick(); // all failed: still answers rather than refusing outright
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_destination_comes_back_after_its_reactivation_time() {
        let round = cluster(Policy::FirstAlphabetical, &["a", "b"]);
        round.mark_failed(&round.destinations[0]);
        assert_eq!(round.pick().0.name, "b");
        tokio::time::advance(round.reactivation - Duration::from_millis(1)).await;
        assert_eq!(round.pick().0.name, "b", "still skipped just before");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(round.pick().0.name, "a", "back once the time is up");
    }
}
