//! Loading the `ReverseProxy` section of an ASP.NET `appsettings.json` (YARP's configuration
//! shape) into routes and clusters, so a team can bring its YARP file unchanged.
//!
//! The file is either a whole appsettings file (only its `ReverseProxy` section is read) or the
//! section itself. Keys are YARP's PascalCase names. Anything this gateway would silently ignore
//! is refused instead, naming the route or cluster and the field: an unnoticed typo in a proxy
//! configuration is a security bug.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

use super::route::{
    Access, Cluster, Destination, HostPattern, Policy, RouteDef, Template, TokenType, Transform,
    When,
};
use crate::policy::Policies;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Section {
    #[serde(default)]
    routes: BTreeMap<String, RouteJson>,
    #[serde(default)]
    clusters: BTreeMap<String, ClusterJson>,
    /// Policies of this file, beside the `--policy` flags: `{"NAME": ["RULE", …]}`.
    #[serde(default, rename = "oidc-bff.Policies")]
    policies: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct RouteJson {
    cluster_id: String,
    #[serde(rename = "Match")]
    matcher: MatchJson,
    #[serde(default)]
    order: Option<i32>,
    #[serde(default)]
    authorization_policy: Option<String>,
    #[serde(default)]
    transforms: Vec<BTreeMap<String, String>>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct MatchJson {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct ClusterJson {
    destinations: BTreeMap<String, DestinationJson>,
    #[serde(default)]
    load_balancing_policy: Option<String>,
    #[serde(default)]
    http_request: Option<HttpRequestJson>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct DestinationJson {
    address: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct HttpRequestJson {
    #[serde(default)]
    activity_timeout: Option<String>,
}

/// What a YARP file defines: its routes, and every policy in force (the file's and those of
/// the `--policy` flags).
pub type Loaded = (Vec<RouteDef>, Policies);

/// Reads a YARP configuration file; every problem is one line naming where it is. Routes may
/// name the policies of `flag_policies` and of the file.
pub fn load(path: &Path, flag_policies: &Policies) -> Result<Loaded, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|error| vec![error.to_string()])?;
    parse(&text, flag_policies)
}

/// Parses YARP configuration text.
pub fn parse(text: &str, flag_policies: &Policies) -> Result<Loaded, Vec<String>> {
    let root: serde_json::Value =
        serde_json::from_str(text).map_err(|error| vec![format!("not JSON: {error}")])?;
    let (section, prefix) = match root.get("ReverseProxy") {
        Some(section) => (section.clone(), "ReverseProxy."),
        None => (root, ""),
    };
    let section: Section = serde_path_to_error::deserialize(section).map_err(|error| {
        let path = error.path().to_string();
        vec![format!("{prefix}{path}: {}", error.inner())]
    })?;
    build(section, prefix, flag_policies)
}

fn build(section: Section, prefix: &str, flag_policies: &Policies) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let mut file_policies = Vec::new();
    for (name, rules) in &section.policies {
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        match crate::policy::Policy::from_rules(name, &rules) {
            Ok(policy) => file_policies.push(policy),
            Err(error) => errors.push(format!("{prefix}oidc-bff.Policies.{name}: {error}")),
        }
    }
    let policies = match Policies::new(flag_policies.iter().cloned().chain(file_policies)) {
        Ok(policies) => policies,
        Err(error) => {
            errors.push(format!(
                "{prefix}oidc-bff.Policies: {error} (a --policy flag and the file)"
            ));
            flag_policies.clone()
        }
    };
    let mut clusters = BTreeMap::new();
    for (id, cluster) in section.clusters {
        let at = format!("{prefix}Clusters.{id}");
        let token = match token_metadata(cluster.metadata.as_ref(), &at) {
            Ok(token) => token,
            Err(mut problems) => {
                errors.append(&mut problems);
                None
            }
        };
        match build_cluster(&id, cluster, &at) {
            Ok(cluster) => {
                clusters.insert(id, (Arc::new(cluster), token));
            }
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    let mut routes = Vec::new();
    for (id, route) in section.routes {
        let at = format!("{prefix}Routes.{id}");
        match build_route(&id, route, &clusters, &policies, &at) {
            Ok(route) => routes.push(route),
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    if errors.is_empty() {
        Ok((routes, policies))
    } else {
        Err(errors)
    }
}

/// Duende.BFF's route and cluster metadata for the token an upstream gets.
const TOKEN_TYPE_METADATA: &str = "Duende.Bff.Yarp.TokenType";
const OPTIONAL_USER_TOKEN_METADATA: &str = "Duende.Bff.Yarp.OptionalUserToken";
const ANTIFORGERY_METADATA: &str = "Duende.Bff.Yarp.AntiforgeryCheck";
/// This gateway's route metadata.
const IDENTITY_HEADERS_METADATA: &str = "oidc-bff.IdentityHeaders";
const CLIENT_SCOPE_METADATA: &str = "oidc-bff.ClientScope";
const RESOURCE_METADATA: &str = "oidc-bff.Resource";

/// The token type a `Metadata` object names (Duende's keys; values as Duende reads them, case
/// ignored), if any.
fn token_metadata(
    metadata: Option<&BTreeMap<String, String>>,
    at: &str,
) -> Result<Option<TokenType>, Vec<String>> {
    let mut errors = Vec::new();
    let mut token = None;
    for (key, value) in metadata.into_iter().flatten() {
        if key == TOKEN_TYPE_METADATA {
            match value.to_ascii_lowercase().as_str() {
                "user" => token = Some(TokenType::User),
                "userornone" => token = Some(TokenType::OptionalUser),
                "none" => token = Some(TokenType::None),
                "client" => token = Some(TokenType::Client),
                "userorclient" => token = Some(TokenType::UserOrClient),
                _ => errors.push(format!(
                    "{at}.Metadata.{key}: {value:?} is not one of User, UserOrNone, Client, \
                     UserOrClient, None"
                )),
            }
        } else if key == OPTIONAL_USER_TOKEN_METADATA {
            match value.to_ascii_lowercase().as_str() {
                "true" => token = Some(TokenType::OptionalUser),
                "false" => {}
                _ => errors.push(format!(
                    "{at}.Metadata.{key}: {value:?} must be \"true\" or \"false\""
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(token)
    } else {
        Err(errors)
    }
}

fn build_cluster(id: &str, json: ClusterJson, at: &str) -> Result<Cluster, Vec<String>> {
    let mut errors = unknown_metadata(
        json.metadata.as_ref(),
        &[TOKEN_TYPE_METADATA, OPTIONAL_USER_TOKEN_METADATA],
        at,
    );
    let policy = match json.load_balancing_policy.as_deref() {
        None | Some("PowerOfTwoChoices") => Policy::PowerOfTwoChoices,
        Some("RoundRobin") => Policy::RoundRobin,
        Some("Random") => Policy::Random,
        Some("LeastRequests") => Policy::LeastRequests,
        Some("FirstAlphabetical") => Policy::FirstAlphabetical,
        Some(other) => {
            errors.push(format!(
                "{at}.LoadBalancingPolicy: {other:?} is not one of RoundRobin, PowerOfTwoChoices, \
                 Random, LeastRequests, FirstAlphabetical"
            ));
            Policy::RoundRobin
        }
    };
    let timeout = match json
        .http_request
        .and_then(|request| request.activity_timeout)
    {
        Some(text) => match parse_timespan(&text) {
            Some(timeout) => Some(timeout),
            None => {
                errors.push(format!(
                    "{at}.HttpRequest.ActivityTimeout: {text:?} is not a time span like 00:01:30"
                ));
                None
            }
        },
        None => None,
    };
    let mut destinations = Vec::new();
    for (name, destination) in json.destinations {
        let _ = destination.metadata;
        match Url::parse(&destination.address) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                destinations.push(Destination::new(name, url));
            }
            _ => errors.push(format!(
                "{at}.Destinations.{name}.Address: {:?} is not an http(s) URL",
                destination.address
            )),
        }
    }
    if destinations.is_empty() && errors.is_empty() {
        errors.push(format!(
            "{at}.Destinations: a cluster needs at least one destination"
        ));
    }
    if errors.is_empty() {
        Ok(Cluster::new(id.to_owned(), destinations, policy, timeout))
    } else {
        Err(errors)
    }
}

/// The route metadata key that allows (default) or refuses WebSocket tunnels on a route.
const WEBSOCKETS_METADATA: &str = "oidc-bff.WebSockets";

/// Metadata keys of Duende.BFF or of this gateway that nothing reads: a typo there would
/// silently drop a token or a check, so it is refused.
fn unknown_metadata(
    metadata: Option<&BTreeMap<String, String>>,
    known: &[&str],
    at: &str,
) -> Vec<String> {
    metadata
        .into_iter()
        .flatten()
        .map(|(key, _)| key)
        .filter(|key| {
            let ours = key.starts_with("Duende.Bff") || key.starts_with("oidc-bff.");
            ours && !known.iter().any(|known| key.eq_ignore_ascii_case(known))
        })
        .map(|key| format!("{at}.Metadata.{key}: not a key this gateway knows (a typo?)"))
        .collect()
}

/// A `"true"`/`"false"` metadata value.
fn flag_metadata(key: &str, value: &str, at: &str, errors: &mut Vec<String>) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            errors.push(format!(
                "{at}.Metadata.{key}: {value:?} must be \"true\" or \"false\""
            ));
            None
        }
    }
}

fn build_route(
    id: &str,
    json: RouteJson,
    clusters: &BTreeMap<String, (Arc<Cluster>, Option<TokenType>)>,
    policies: &Policies,
    at: &str,
) -> Result<RouteDef, Vec<String>> {
    let mut errors = unknown_metadata(
        json.metadata.as_ref(),
        &[
            WEBSOCKETS_METADATA,
            TOKEN_TYPE_METADATA,
            OPTIONAL_USER_TOKEN_METADATA,
            ANTIFORGERY_METADATA,
            IDENTITY_HEADERS_METADATA,
            CLIENT_SCOPE_METADATA,
            RESOURCE_METADATA,
        ],
        at,
    );
    let mut websockets = true;
    let mut antiforgery = true;
    let mut identity_headers = false;
    let mut client_scope = None;
    let mut resource = None;
    for (key, value) in json.metadata.iter().flatten() {
        if key.eq_ignore_ascii_case(WEBSOCKETS_METADATA) {
            websockets = flag_metadata(key, value, at, &mut errors).unwrap_or(websockets);
        } else if key == ANTIFORGERY_METADATA {
            antiforgery = flag_metadata(key, value, at, &mut errors).unwrap_or(antiforgery);
        } else if key.eq_ignore_ascii_case(IDENTITY_HEADERS_METADATA) {
            identity_headers =
                flag_metadata(key, value, at, &mut errors).unwrap_or(identity_headers);
        } else if key.eq_ignore_ascii_case(RESOURCE_METADATA) {
            match super::config::resource_indicator(value) {
                Ok(uri) => resource = Some(uri),
                Err(problem) => errors.push(format!("{at}.Metadata.{key}: {problem}")),
            }
        } else if key.eq_ignore_ascii_case(CLIENT_SCOPE_METADATA) {
            match super::config::client_scope(value.split_ascii_whitespace()) {
                Ok(scope) => client_scope = Some(scope),
                Err(problem) => errors.push(format!("{at}.Metadata.{key}: {problem}")),
            }
        }
    }
    let route_token = token_metadata(json.metadata.as_ref(), at).unwrap_or_else(|mut problems| {
        errors.append(&mut problems);
        None
    });
    let (cluster, cluster_token) = match clusters.get(&json.cluster_id) {
        Some((cluster, token)) => (Some(Arc::clone(cluster)), *token),
        None => (None, None),
    };
    if cluster.is_none() {
        errors.push(format!(
            "{at}.ClusterId: no cluster named {:?} in Clusters",
            json.cluster_id
        ));
    }
    let template = match json.matcher.path.as_deref() {
        Some(path) => Template::parse(path)
            .map_err(|problem| errors.push(format!("{at}.Match.Path: {problem}")))
            .ok(),
        // YARP allows host-only routes; they take every path.
        None if json.matcher.hosts.is_some() => Template::parse("/{**catch-all}").ok(),
        None => {
            errors.push(format!("{at}.Match.Path: a route needs a Path (or Hosts)"));
            None
        }
    };
    let methods = json.matcher.methods.map(|methods| {
        methods
            .iter()
            .filter_map(
                |method| match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        errors.push(format!(
                            "{at}.Match.Methods: {method:?} is not an HTTP method"
                        ));
                        None
                    }
                },
            )
            .collect()
    });
    let hosts = json
        .matcher
        .hosts
        .map(|hosts| hosts.iter().map(|host| HostPattern::new(host)).collect());
    // The route's own token type wins over its cluster's; the default sends the user's.
    let mut access = Access::user();
    access.token = route_token.or(cluster_token).unwrap_or(TokenType::User);
    access.identity_headers = identity_headers;
    access.client_scope = client_scope;
    access.resource = resource;
    match json.authorization_policy.as_deref() {
        None => {}
        Some(policy) if policy.eq_ignore_ascii_case("default") => {}
        Some(policy) if policy.eq_ignore_ascii_case("anonymous") => {
            if route_token.is_some_and(|token| token != TokenType::None) {
                errors.push(format!(
                    "{at}.AuthorizationPolicy: \"anonymous\" sends no token, but the route's \
                     {TOKEN_TYPE_METADATA} asks for one"
                ));
            }
            access.token = TokenType::None;
        }
        Some(name) => match policies.get(name) {
            Some(policy) => access.policy = Some(Arc::new(policy.clone())),
            None => errors.push(format!(
                "{at}.AuthorizationPolicy: {name:?} names no policy (a --policy flag or the \
                 file's oidc-bff.Policies; or \"anonymous\", or \"default\", which requires a \
                 session)"
            )),
        },
    }
    if let Err(problem) =
        super::config::check_client_scope(access.token, access.client_scope.as_ref())
    {
        errors.push(format!("{at}.Metadata.{CLIENT_SCOPE_METADATA}: {problem}"));
    }
    if let Err(problem) = super::config::check_resource(access.token, access.resource.as_ref()) {
        errors.push(format!("{at}.Metadata.{RESOURCE_METADATA}: {problem}"));
    }
    // A user's token never goes upstream without the CSRF check: a route may skip it only
    // when it sends nothing of the user's.
    if !antiforgery && access.reads_session() {
        errors.push(format!(
            "{at}.Metadata.{ANTIFORGERY_METADATA}: \"false\" is allowed only on routes that send \
             no user token (TokenType None or AuthorizationPolicy anonymous)"
        ));
    }
    let mut transforms = Vec::new();
    for (index, transform) in json.transforms.iter().enumerate() {
        match build_transform(transform) {
            Ok(transform) => transforms.push(transform),
            Err(problem) => errors.push(format!("{at}.Transforms[{index}]: {problem}")),
        }
    }
    match (cluster, template) {
        (Some(cluster), Some(template)) if errors.is_empty() => Ok(RouteDef {
            id: id.into(),
            template,
            methods,
            hosts,
            order: json.order.unwrap_or(0),
            access,
            websockets,
            transforms,
            cluster,
        }),
        _ => Err(errors),
    }
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("{text:?} is not a header name"))
}

fn header_value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text).map_err(|_| format!("{text:?} is not a header value"))
}

fn build_transform(fields: &BTreeMap<String, String>) -> Result<Transform, String> {
    let get = |key: &str| fields.get(key).map(String::as_str);
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    let only = |allowed: &[&str]| -> Result<(), String> {
        match keys.iter().find(|key| !allowed.contains(key)) {
            Some(extra) => Err(format!("unexpected key {extra:?}")),
            None => Ok(()),
        }
    };
    let when = || -> Result<When, String> {
        match get("When") {
            None | Some("Success") => Ok(When::Success),
            Some("Always") => Ok(When::Always),
            Some("Failure") => Ok(When::Failure),
            Some(other) => Err(format!("When {other:?} is not Success, Always or Failure")),
        }
    };
    if let Some(prefix) = get("PathRemovePrefix") {
        only(&["PathRemovePrefix"])?;
        return Ok(Transform::PathRemovePrefix(
            prefix.trim_end_matches('/').to_owned(),
        ));
    }
    if let Some(prefix) = get("PathPrefix") {
        only(&["PathPrefix"])?;
        return Ok(Transform::PathPrefix(
            prefix.trim_end_matches('/').to_owned(),
        ));
    }
    if let Some(path) = get("PathSet") {
        only(&["PathSet"])?;
        return Ok(Transform::PathSet(path.to_owned()));
    }
    if let Some(pattern) = get("PathPattern") {
        only(&["PathPattern"])?;
        return Ok(Transform::PathPattern(Template::parse(pattern)?));
    }
    if let Some(name) = get("RequestHeader") {
        only(&["RequestHeader", "Set", "Append"])?;
        let name = header_name(name)?;
        return match (get("Set"), get("Append")) {
            (Some(value), None) => Ok(Transform::RequestHeaderSet(name, header_value(value)?)),
            (None, Some(value)) => Ok(Transform::RequestHeaderAppend(name, header_value(value)?)),
            _ => Err("RequestHeader needs exactly one of Set or Append".into()),
        };
    }
    if let Some(name) = get("RequestHeaderRemove") {
        only(&["RequestHeaderRemove"])?;
        return Ok(Transform::RequestHeaderRemove(header_name(name)?));
    }
    if let Some(value) = get("RequestHeaderOriginalHost") {
        only(&["RequestHeaderOriginalHost"])?;
        return match value.to_ascii_lowercase().as_str() {
            "true" => Ok(Transform::RequestHeaderOriginalHost(true)),
            "false" => Ok(Transform::RequestHeaderOriginalHost(false)),
            _ => Err(format!(
                "RequestHeaderOriginalHost {value:?} is not true or false"
            )),
        };
    }
    if let Some(name) = get("ResponseHeader") {
        only(&["ResponseHeader", "Set", "Append", "When"])?;
        let name = header_name(name)?;
        let when = when()?;
        return match (get("Set"), get("Append")) {
            (Some(value), None) => Ok(Transform::ResponseHeaderSet(
                name,
                header_value(value)?,
                when,
            )),
            (None, Some(value)) => Ok(Transform::ResponseHeaderAppend(
                name,
                header_value(value)?,
                when,
            )),
            _ => Err("ResponseHeader needs exactly one of Set or Append".into()),
        };
    }
    if let Some(name) = get("ResponseHeaderRemove") {
        only(&["ResponseHeaderRemove", "When"])?;
        return Ok(Transform::ResponseHeaderRemove(header_name(name)?, when()?));
    }
    Err(format!("unsupported transform {keys:?}"))
}

/// Parses a .NET TimeSpan: `[d.]hh:mm:ss[.fraction]`.
fn parse_timespan(text: &str) -> Option<Duration> {
    let (days, rest) = match text.split_once('.') {
        Some((days, rest)) if rest.contains(':') && !days.contains(':') => {
            (days.parse::<u64>().ok()?, rest)
        }
        _ => (0, text),
    };
    let mut parts = rest.split(':');
    let hours: u64 = parts.next()?.parse().ok()?;
    let minutes: u64 = parts.next()?.parse().ok()?;
    let seconds_text = parts.next()?;
    if parts.next().is_some() || minutes >= 60 {
        return None;
    }
    let seconds: f64 = seconds_text.parse().ok()?;
    if !(0.0..60.0).contains(&seconds) {
        return None;
    }
    let whole = (days * 24 + hours) * 3_600 + minutes * 60;
    Some(Duration::from_secs(whole) + Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes of a file, without policies of flags.
    fn routes(text: &str) -> Result<Vec<RouteDef>, Vec<String>> {
        parse(text, &Policies::default()).map(|(routes, _)| routes)
    }

    /// The example section of ../shared/seed.txt, verbatim.
    const SEED: &str = r#"{
"ReverseProxy": {
    "Routes": {
      "route1" : {
        "ClusterId": "cluster1",
        "Match": {
          "Path": "/sender/{**catch-all}"
        },
        "Transforms": [
          {
            "PathRemovePrefix": "/sender"
          }
        ]
      }
    },
    "Clusters": {
      "cluster1": {
        "Destinations": {
          "destination1": {
            "Address": "https://localhost:7002"
          }
        }
      }
    }
  }
}"#;

    #[test]
    fn the_seeds_section_loads_as_it_is() {
        let routes = routes(SEED).expect("seed config");
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(&*route.id, "route1");
        assert_eq!(route.access.token, TokenType::User);
        let values = route
            .matches(&Method::GET, None, "/sender/products")
            .expect("match");
        assert_eq!(
            Transform::rewrite_path(&route.transforms, "/sender/products", &values),
            "/products"
        );
        assert_eq!(route.cluster.id, "cluster1");
    }

    #[test]
    fn a_file_that_is_the_section_itself_loads_too() {
        let section = r#"{"Routes": {"r": {"ClusterId": "c", "Match": {"Path": "/a/{**x}"}}},
                          "Clusters": {"c": {"Destinations": {"d": {"Address": "http://127.0.0.1:1"}}}}}"#;
        assert_eq!(routes(section).expect("section").len(), 1);
    }

    #[test]
    fn mistakes_name_the_route_or_cluster_and_the_field() {
        let unknown = SEED.replace("\"Path\":", "\"Pathx\":");
        let errors = routes(&unknown).expect_err("unknown key");
        assert!(
            errors[0].contains("ReverseProxy.Routes.route1.Match"),
            "{errors:?}"
        );
        assert!(errors[0].contains("Pathx"), "{errors:?}");

        let missing = SEED.replace("\"ClusterId\": \"cluster1\"", "\"ClusterId\": \"nope\"");
        let errors = routes(&missing).expect_err("missing cluster");
        assert!(
            errors[0].starts_with("ReverseProxy.Routes.route1.ClusterId"),
            "{errors:?}"
        );

        let pattern = SEED.replace("/sender/{**catch-all}", "/sender/{**catch-all}/x");
        let errors = routes(&pattern).expect_err("bad pattern");
        assert!(
            errors[0].starts_with("ReverseProxy.Routes.route1.Match.Path"),
            "{errors:?}"
        );

        let transform = SEED.replace("PathRemovePrefix", "PathRemovePrefixx");
        let errors = routes(&transform).expect_err("bad transform");
        assert!(
            errors[0].starts_with("ReverseProxy.Routes.route1.Transforms[0]"),
            "{errors:?}"
        );

        let address = SEED.replace("https://localhost:7002", "localhost:7002");
        let errors = routes(&address).expect_err("bad address");
        assert!(
            errors[0]
                .starts_with("ReverseProxy.Clusters.cluster1.Destinations.destination1.Address"),
            "{errors:?}"
        );

        let policy = SEED.replace(
            "\"Transforms\"",
            "\"AuthorizationPolicy\": \"admins\", \"Transforms\"",
        );
        let errors = routes(&policy).expect_err("unknown policy");
        assert!(errors[0].contains("AuthorizationPolicy"), "{errors:?}");
    }

    #[test]
    fn every_supported_key_is_understood() {
        let full = r#"{"ReverseProxy": {
          "Routes": {
            "api": {
              "ClusterId": "backend", "Order": 5, "AuthorizationPolicy": "anonymous",
              "Match": {"Path": "/api/{**rest}", "Methods": ["GET", "post"], "Hosts": ["*.example.com"]},
              "Transforms": [
                {"PathPrefix": "/v2"}, {"PathSet": "/x"}, {"PathPattern": "/y/{**rest}"},
                {"RequestHeader": "X-A", "Set": "1"}, {"RequestHeader": "X-B", "Append": "2"},
                {"RequestHeaderRemove": "X-C"}, {"RequestHeaderOriginalHost": "true"},
                {"ResponseHeader": "X-D", "Set": "4", "When": "Always"},
                {"ResponseHeaderRemove": "Server"}
              ]
            }
          },
          "Clusters": {
            "backend": {
              "LoadBalancingPolicy": "LeastRequests",
              "HttpRequest": {"ActivityTimeout": "00:01:30"},
              "Destinations": {"one": {"Address": "http://127.0.0.1:1/base"}, "two": {"Address": "https://127.0.0.1:2"}}
            }
          }
        }}"#;
        let routes = routes(full).expect("full config");
        let route = &routes[0];
        assert_eq!(route.access.token, TokenType::None);
        assert_eq!(route.order, 5);
        assert_eq!(route.transforms.len(), 9);
        assert_eq!(route.cluster.timeout, Some(Duration::from_secs(90)));
        assert!(
            route
                .matches(&Method::POST, Some("app.example.com"), "/api/a")
                .is_some()
        );
        assert!(
            route
                .matches(&Method::DELETE, Some("app.example.com"), "/api/a")
                .is_none()
        );
        assert!(
            route
                .matches(&Method::GET, Some("evil.com"), "/api/a")
                .is_none()
        );
    }

    #[test]
    fn time_spans_parse_like_dotnet() {
        assert_eq!(parse_timespan("00:01:30"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_timespan("1.00:00:00"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_timespan("00:00:00.5"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_timespan("90s"), None);
        assert_eq!(parse_timespan("00:61:00"), None);
    }

    /// A one-route file whose route carries `route` (JSON members) and whose cluster carries
    /// `cluster`.
    fn file(route: &str, cluster: &str) -> String {
        format!(
            r#"{{"Routes": {{"r": {{"ClusterId": "c", "Match": {{"Path": "/api/{{**rest}}"}}{route}}}}},
                "Clusters": {{"c": {{"Destinations": {{"d": {{"Address": "http://127.0.0.1:9"}}}}{cluster}}}}}}}"#
        )
    }

    #[test]
    fn duende_token_metadata_sets_the_token_type_route_over_cluster() {
        let token = |route: &str, cluster: &str| {
            routes(&file(route, cluster)).expect("loads")[0]
                .access
                .token
        };
        assert_eq!(token("", ""), TokenType::User);
        let route_meta =
            |value: &str| format!(r#", "Metadata": {{"Duende.Bff.Yarp.TokenType": "{value}"}}"#);
        assert_eq!(
            token(&route_meta("UserOrNone"), ""),
            TokenType::OptionalUser
        );
        assert_eq!(token(&route_meta("user"), ""), TokenType::User);
        assert_eq!(token(&route_meta("None"), ""), TokenType::None);
        assert_eq!(token(&route_meta("Client"), ""), TokenType::Client);
        assert_eq!(
            token(&route_meta("UserOrClient"), ""),
            TokenType::UserOrClient
        );
        let scoped = routes(&file(
            r#", "Metadata": {"Duende.Bff.Yarp.TokenType": "Client", "oidc-bff.ClientScope": "orders.read  orders.write"}"#,
            "",
        ))
        .expect("loads");
        assert_eq!(
            scoped[0].access.client_scope.as_deref(),
            Some("orders.read orders.write")
        );
        assert_eq!(
            token("", &route_meta("UserOrNone")),
            TokenType::OptionalUser,
            "a cluster's metadata applies to its routes"
        );
        assert_eq!(
            token(&route_meta("User"), &route_meta("None")),
            TokenType::User
        );
        assert_eq!(
            token(
                r#", "Metadata": {"Duende.Bff.Yarp.OptionalUserToken": "true"}"#,
                ""
            ),
            TokenType::OptionalUser
        );
    }

    #[test]
    fn metadata_that_would_weaken_a_route_silently_is_refused() {
        for (route, cluster, reason) in [
            (
                r#", "Metadata": {"Duende.Bff.Yarp.AntiforgeryCheck": "false"}"#,
                "",
                "only on routes that send no user token",
            ),
            (
                r#", "Metadata": {"Duende.Bff.Yarp.TokenType": "UserOrNone", "Duende.Bff.Yarp.AntiforgeryCheck": "false"}"#,
                "",
                "only on routes that send no user token",
            ),
            (
                r#", "Metadata": {"Duende.Bff.Yarp.TokenTyp": "User"}"#,
                "",
                "a typo?",
            ),
            (
                "",
                r#", "Metadata": {"oidc-bff.Resources": "x"}"#,
                "a typo?",
            ),
            (
                r#", "Metadata": {"oidc-bff.ClientScope": "orders.read"}"#,
                "",
                "only with token=client",
            ),
            (
                r#", "Metadata": {"Duende.Bff.Yarp.TokenType": "Client", "oidc-bff.ClientScope": "a\\b"}"#,
                "",
                "not a scope",
            ),
            (
                r#", "Metadata": {"Duende.Bff.Yarp.TokenType": "Admin"}"#,
                "",
                "not one of",
            ),
            (
                r#", "AuthorizationPolicy": "anonymous", "Metadata": {"Duende.Bff.Yarp.TokenType": "User"}"#,
                "",
                "sends no token",
            ),
            (
                r#", "AuthorizationPolicy": "admins""#,
                "",
                "names no policy",
            ),
        ] {
            let errors = routes(&file(route, cluster)).expect_err(route);
            assert!(
                errors.iter().any(|error| error.contains(reason)),
                "{route} {cluster}: {errors:?}"
            );
        }
        // Skipping the check is fine where nothing of the user's is sent.
        let anonymous = file(
            r#", "AuthorizationPolicy": "anonymous", "Metadata": {"Duende.Bff.Yarp.AntiforgeryCheck": "false"}"#,
            "",
        );
        assert_eq!(
            routes(&anonymous).expect("loads")[0].access.token,
            TokenType::None
        );
    }

    #[test]
    fn file_policies_join_the_flags_and_may_not_redefine_them() {
        let with_policy = |policies: &str| {
            let text = file(r#", "AuthorizationPolicy": "admins""#, "");
            let text = text.replacen('{', &format!(r#"{{"oidc-bff.Policies": {policies}, "#), 1);
            parse(
                &text,
                &Policies::new([crate::policy::Policy::parse("staff=email").expect("flag")])
                    .expect("set"),
            )
        };
        let (loaded, policies) = with_policy(r#"{"admins": ["groups:admin"]}"#).expect("loads");
        assert_eq!(
            loaded[0].access.policy.as_ref().map(|policy| policy.name()),
            Some("admins")
        );
        assert!(policies.get("staff").is_some() && policies.get("admins").is_some());
        let twice = with_policy(r#"{"admins": ["groups:admin"], "staff": ["groups:staff"]}"#)
            .expect_err("redefined");
        assert!(
            twice.iter().any(|error| error.contains("twice")),
            "{twice:?}"
        );
        let bad = with_policy(r#"{"admins": ["groups:"]}"#).expect_err("bad rule");
        assert!(
            bad.iter()
                .any(|error| error.contains("oidc-bff.Policies.admins")),
            "{bad:?}"
        );
        // A file can say what a flag cannot (a flag's spaces separate policies): an acr value
        // with a space would be two values in `acr_values`.
        let spaced = with_policy(r#"{"admins": ["acr:gold level"]}"#).expect_err("acr value");
        assert!(
            spaced
                .iter()
                .any(|error| error.contains("oidc-bff.Policies.admins")
                    && error.contains("acr value")),
            "{spaced:?}"
        );
    }
}
