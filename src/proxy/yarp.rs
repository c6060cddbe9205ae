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
    Cluster, Destination, HostPattern, Policy, RouteDef, Template, Transform, When,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Section {
    #[serde(default)]
    routes: BTreeMap<String, RouteJson>,
    #[serde(default)]
    clusters: BTreeMap<String, ClusterJson>,
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

/// Reads a YARP configuration file; every problem is one line naming where it is.
pub fn load(path: &Path) -> Result<Vec<RouteDef>, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|error| vec![error.to_string()])?;
    parse(&text)
}

/// Parses YARP configuration text.
pub fn parse(text: &str) -> Result<Vec<RouteDef>, Vec<String>> {
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
    build(section, prefix)
}

fn build(section: Section, prefix: &str) -> Result<Vec<RouteDef>, Vec<String>> {
    let mut errors = Vec::new();
    let mut clusters = BTreeMap::new();
    for (id, cluster) in section.clusters {
        let at = format!("{prefix}Clusters.{id}");
        match build_cluster(&id, cluster, &at) {
            Ok(cluster) => {
                clusters.insert(id, Arc::new(cluster));
            }
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    let mut routes = Vec::new();
    for (id, route) in section.routes {
        let at = format!("{prefix}Routes.{id}");
        match build_route(&id, route, &clusters, &at) {
            Ok(route) => routes.push(route),
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(errors)
    }
}

fn build_cluster(id: &str, json: ClusterJson, at: &str) -> Result<Cluster, Vec<String>> {
    let _ = json.metadata;
    let mut errors = Vec::new();
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

fn build_route(
    id: &str,
    json: RouteJson,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    at: &str,
) -> Result<RouteDef, Vec<String>> {
    let mut errors = Vec::new();
    let mut websockets = true;
    for (key, value) in json.metadata.iter().flatten() {
        if key.eq_ignore_ascii_case(WEBSOCKETS_METADATA) {
            match value.to_ascii_lowercase().as_str() {
                "true" => websockets = true,
                "false" => websockets = false,
                _ => errors.push(format!(
                    "{at}.Metadata.{key}: {value:?} must be \"true\" or \"false\""
                )),
            }
        }
    }
    let cluster = clusters.get(&json.cluster_id).cloned();
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
    let anonymous = match json.authorization_policy.as_deref() {
        None => false,
        Some(policy) if policy.eq_ignore_ascii_case("default") => false,
        Some(policy) if policy.eq_ignore_ascii_case("anonymous") => true,
        Some(policy) => {
            errors.push(format!(
                "{at}.AuthorizationPolicy: {policy:?} is not supported (use \"anonymous\" or \
                 \"default\", which requires a session)"
            ));
            false
        }
    };
    let mut transforms = Vec::new();
    for (index, transform) in json.transforms.iter().enumerate() {
        match build_transform(transform) {
            Ok(transform) => transforms.push(transform),
            Err(problem) => errors.push(format!("{at}.Transforms[{index}]: {problem}")),
        }
    }
    match (cluster, template) {
        (Some(cluster), Some(template)) if errors.is_empty() => Ok(RouteDef {
            id: id.to_owned(),
            template,
            methods,
            hosts,
            order: json.order.unwrap_or(0),
            anonymous,
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
        let routes = parse(SEED).expect("seed config");
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(route.id, "route1");
        assert!(!route.anonymous);
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
        assert_eq!(parse(section).expect("section").len(), 1);
    }

    #[test]
    fn mistakes_name_the_route_or_cluster_and_the_field() {
        let unknown = SEED.replace("\"Path\":", "\"Pathx\":");
        let errors = parse(&unknown).expect_err("unknown key");
        assert!(
            errors[0].contains("ReverseProxy.Routes.route1.Match"),
            "{errors:?}"
        );
        assert!(errors[0].contains("Pathx"), "{errors:?}");

        let missing = SEED.replace("\"ClusterId\": \"cluster1\"", "\"ClusterId\": \"nope\"");
        let errors = parse(&missing).expect_err("missing cluster");
        assert!(
            errors[0].starts_with("ReverseProxy.Routes.route1.ClusterId"),
            "{errors:?}"
        );

        let pattern = SEED.replace("/sender/{**catch-all}", "/sender/{**catch-all}/x");
        let errors = parse(&pattern).expect_err("bad pattern");
        assert!(
            errors[0].starts_with("ReverseProxy.Routes.route1.Match.Path"),
            "{errors:?}"
        );

        let transform = SEED.replace("PathRemovePrefix", "PathRemovePrefixx");
        let errors = parse(&transform).expect_err("bad transform");
        assert!(
            errors[0].starts_with("ReverseProxy.Routes.route1.Transforms[0]"),
            "{errors:?}"
        );

        let address = SEED.replace("https://localhost:7002", "localhost:7002");
        let errors = parse(&address).expect_err("bad address");
        assert!(
            errors[0]
                .starts_with("ReverseProxy.Clusters.cluster1.Destinations.destination1.Address"),
            "{errors:?}"
        );

        let policy = SEED.replace(
            "\"Transforms\"",
            "\"AuthorizationPolicy\": \"admins\", \"Transforms\"",
        );
        let errors = parse(&policy).expect_err("unknown policy");
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
        let routes = parse(full).expect("full config");
        let route = &routes[0];
        assert!(route.anonymous);
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
}
