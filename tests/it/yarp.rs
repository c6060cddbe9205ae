//! `--proxy-config`: an ASP.NET team's YARP section drives the proxy.

use std::path::PathBuf;

use crate::support::{Upstream, setup};

const CSRF: (&str, &str) = ("x-csrf", "1");

fn write_config(json: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("appsettings.json");
    std::fs::write(&path, json).expect("write");
    (dir, path)
}

#[tokio::test]
async fn the_seeds_appsettings_section_routes_with_the_bearer() {
    let upstream = Upstream::start().await;
    // ../shared/seed.txt's section, in a whole appsettings file, pointed at the test upstream.
    let json = format!(
        r#"{{
  "Logging": {{ "LogLevel": {{ "Default": "Information" }} }},
  "AllowedHosts": "*",
  "ReverseProxy": {{
    "Routes": {{
      "route1" : {{
        "ClusterId": "cluster1",
        "Match": {{ "Path": "/sender/{{**catch-all}}" }},
        "Transforms": [ {{ "PathRemovePrefix": "/sender" }} ]
      }}
    }},
    "Clusters": {{
      "cluster1": {{
        "Destinations": {{ "destination1": {{ "Address": "{}" }} }}
      }}
    }}
  }}
}}"#,
        upstream.url
    );
    let (_dir, path) = write_config(&json);
    let (provider, gateway) = setup(&["--proxy-config", path.to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    assert_eq!(browser.get("/sender/products", &[CSRF]).await.status, 401);
    browser.login_ok().await;
    let reply = browser.get("/sender/products?page=2", &[CSRF]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = upstream.seen();
    assert_eq!(seen[0].target, "/products?page=2");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {}", provider.last_access_token()).as_str()
    );
}

#[tokio::test]
async fn anonymous_routes_methods_and_transforms_apply() {
    let public = Upstream::start().await;
    let private = Upstream::start().await;
    let json = format!(
        r#"{{"ReverseProxy": {{
  "Routes": {{
    "health": {{
      "ClusterId": "public", "AuthorizationPolicy": "anonymous",
      "Match": {{ "Path": "/public/{{**rest}}", "Methods": ["GET"] }},
      "Transforms": [
        {{ "PathPattern": "/status/{{**rest}}" }},
        {{ "RequestHeader": "X-Tenant", "Set": "acme" }},
        {{ "RequestHeaderRemove": "X-Debug" }},
        {{ "ResponseHeader": "X-Served-By", "Set": "gateway", "When": "Always" }},
        {{ "ResponseHeaderRemove": "X-Upstream" }}
      ]
    }},
    "orders": {{
      "ClusterId": "private", "Order": 1,
      "Match": {{ "Path": "/orders/{{id:int}}" }},
      "Transforms": [ {{ "RequestHeaderOriginalHost": "true" }} ]
    }}
  }},
  "Clusters": {{
    "public": {{ "Destinations": {{ "a": {{ "Address": "{}" }} }} }},
    "private": {{ "Destinations": {{ "a": {{ "Address": "{}/v1" }} }} }}
  }}
}}}}"#,
        public.url, private.url
    );
    let (_dir, path) = write_config(&json);
    let (_provider, gateway) = setup(&["--proxy-config", path.to_str().expect("utf-8")]).await;
    let mut anonymous = gateway.browser();
    let reply = anonymous
        .get(
            "/public/ping",
            &[("x-debug", "1"), ("authorization", "Bearer x")],
        )
        .await;
    assert_eq!(
        reply.status, 200,
        "anonymous: no session, no CSRF header needed"
    );
    assert_eq!(reply.headers["x-served-by"], "gateway");
    assert!(!reply.headers.contains_key("x-upstream"));
    let seen = &public.seen()[0];
    assert_eq!(seen.target, "/status/ping");
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert!(!seen.headers.contains_key("x-debug"));
    assert!(
        !seen.headers.contains_key("authorization"),
        "anonymous routes carry no token"
    );
    let post = anonymous
        .request(http::Method::POST, "/public/ping", &[], b"")
        .await;
    assert_eq!(post.status, 404, "Methods limits the route");

    assert_eq!(anonymous.get("/orders/42", &[CSRF]).await.status, 401);
    let mut browser = gateway.browser();
    browser.login_ok().await;
    assert_eq!(
        browser.get("/orders/abc", &[CSRF]).await.status,
        404,
        "int constraint"
    );
    assert_eq!(browser.get("/orders/42", &[CSRF]).await.status, 200);
    let seen = &private.seen()[0];
    assert_eq!(seen.target, "/v1/orders/42");
    assert!(
        seen.headers["host"]
            .to_str()
            .expect("ascii")
            .starts_with("localhost:")
    );
}

#[tokio::test]
async fn a_failed_destination_is_skipped_for_a_while() {
    let healthy = Upstream::start().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        listener.local_addr().expect("addr").port()
    };
    let json = format!(
        r#"{{"Routes": {{ "r": {{ "ClusterId": "c", "Match": {{ "Path": "/api/{{**rest}}" }} }} }},
  "Clusters": {{ "c": {{ "LoadBalancingPolicy": "FirstAlphabetical", "Destinations": {{
    "a-primary": {{ "Address": "http://127.0.0.1:{dead}" }},
    "b-standby": {{ "Address": "{}" }} }} }} }} }}"#,
        healthy.url
    );
    let (_dir, path) = write_config(&json);
    let (_provider, gateway) = setup(&["--proxy-config", path.to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();
    browser.login_ok().await;
    assert_eq!(
        browser.get("/api/x", &[CSRF]).await.status,
        502,
        "primary is down"
    );
    for _ in 0..3 {
        assert_eq!(
            browser.get("/api/x", &[CSRF]).await.status,
            200,
            "standby takes over"
        );
    }
    assert_eq!(healthy.seen().len(), 3);
}

#[tokio::test]
async fn encoded_paths_cannot_reach_a_route_that_a_blocked_route_shadows() {
    // The review's layout: `/pub/admin/...` goes to its own (blocked) cluster, the rest of `/pub`
    // to a Tomcat-like upstream under a base path.
    let blocked = Upstream::start().await;
    let public = Upstream::start().await;
    let json = format!(
        r#"{{"ReverseProxy": {{
  "Routes": {{
    "admin": {{ "ClusterId": "blocked", "Order": 0, "AuthorizationPolicy": "anonymous",
               "Match": {{ "Path": "/pub/admin/{{**rest}}" }} }},
    "pub": {{ "ClusterId": "public", "Order": 1, "AuthorizationPolicy": "anonymous",
             "Match": {{ "Path": "/pub/{{**rest}}" }},
             "Transforms": [ {{ "PathRemovePrefix": "/pub" }} ] }}
  }},
  "Clusters": {{
    "blocked": {{ "Destinations": {{ "a": {{ "Address": "{}" }} }} }},
    "public": {{ "Destinations": {{ "a": {{ "Address": "{}/base" }} }} }}
  }}
}}}}"#,
        blocked.url, public.url
    );
    let (_dir, path) = write_config(&json);
    let (_provider, gateway) = setup(&["--proxy-config", path.to_str().expect("utf-8")]).await;
    let mut browser = gateway.browser();

    // An escaped unreserved character is the same path: it takes the same route, and the
    // upstream gets the normal form.
    let reply = browser.get("/pub/%61dmin/users", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(blocked.seen()[0].target, "/pub/admin/users");
    let reply = browser.get("/pub/%41DMIN/users?x=%61", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        blocked.seen()[1].target,
        "/pub/ADMIN/users?x=%61",
        "the query is passed as it came"
    );

    for trick in [
        "/pub/admin;/users",
        "/pub/admin;jsessionid=1/users",
        "/pub/..;/secret",
        "/pub/.;/admin/users",
        "/pub/%2e%2e;/secret",
        "/pub/%252e%252e/secret",
        "/pub/%25%32%65%25%32%65/secret",
        "/pub/%c0%ae%c0%ae/secret",
        "/pub/%ef%bc%8e%ef%bc%8e/secret",
        "/pub/%e2%80%a5/secret",
        "/pub/a%ef%bc%8fb",
        "/pub/%zz",
        "/pub/%0d%0aX-Injected:%201",
    ] {
        let reply = browser.get(trick, &[]).await;
        assert_eq!(reply.status, 400, "{trick}: {}", reply.body);
        assert!(
            reply.json()["error"]
                .as_str()
                .is_some_and(|error| error.starts_with("invalid path")),
            "{trick}: {}",
            reply.body
        );
    }
    assert!(
        public.seen().is_empty(),
        "nothing reached the shadowed cluster: {:?}",
        public.seen()
    );
    assert_eq!(blocked.seen().len(), 2);

    // Prefix removal ignores case as matching does.
    let reply = browser.get("/PUB/Products", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(public.seen()[0].target, "/base/Products");
}

#[tokio::test]
async fn a_route_can_refuse_websocket_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let json = format!(
        r#"{{"Routes": {{
    "live": {{ "ClusterId": "c", "AuthorizationPolicy": "anonymous",
              "Match": {{ "Path": "/live/{{**rest}}" }} }},
    "plain": {{ "ClusterId": "c", "AuthorizationPolicy": "anonymous",
               "Metadata": {{ "oidc-bff.WebSockets": "false" }},
               "Match": {{ "Path": "/plain/{{**rest}}" }} }} }},
  "Clusters": {{ "c": {{ "Destinations": {{ "a": {{ "Address": "{}" }} }} }} }} }}"#,
        upstream.url
    );
    let (_dir, path) = write_config(&json);
    let (_provider, gateway) = setup(&["--proxy-config", path.to_str().expect("utf-8")]).await;
    for (path, expected) in [
        ("/live/socket", "HTTP/1.1 101"),
        ("/plain/socket", "HTTP/1.1 200"),
    ] {
        let mut stream = crate::support::raw::tls_connect(&gateway).await;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\norigin: {}\r\n\r\n",
            gateway.base
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buffer = vec![0u8; 4096];
        let n = stream.read(&mut buffer).await.expect("read");
        let head = String::from_utf8_lossy(&buffer[..n]);
        assert!(head.starts_with(expected), "{path}: {head}");
    }

    let bad = r#"{"Routes": { "r": { "ClusterId": "c", "Match": { "Path": "/x" },
        "Metadata": { "oidc-bff.WebSockets": "maybe" } } },
      "Clusters": { "c": { "Destinations": { "a": { "Address": "http://127.0.0.1:1" } } } } }"#;
    let (_dir, path) = write_config(bad);
    let problems = oidc_bff::proxy::yarp::load(&path, &oidc_bff::policy::Policies::default())
        .expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("oidc-bff.WebSockets")),
        "{problems:?}"
    );
}
