//! The binary's command line: bad configuration fails fast, with one clear line and exit 64.

use std::io::Read;
use std::process::{Command, Stdio};

/// Runs the binary; one that has not exited after 20 s (a configuration it should have refused
/// started serving) is killed and reported with code -2, so that a test fails instead of
/// waiting for ever. The output is small: read once the process is over.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oidc-bff"))
        .args(args)
        .env_remove("OIDC_BFF_CLIENT_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    let mut code = -2;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().expect("wait") {
            code = status.code().unwrap_or(-1);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if code == -2 {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stdout, stderr)
}

const BASE: [&str; 5] = [
    "serve",
    "--issuer",
    "https://id.example.com",
    "--client-id",
    "spa",
];

fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = BASE.to_vec();
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_bad_value_names_its_flag_and_exits_64() {
    let (code, _, stderr) = run(&with(&["--idle-timeout", "8x"]));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--idle-timeout"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn route_options_and_policies_are_checked_before_the_start_and_name_the_flag() {
    for (extra, flag, reason) in [
        (
            vec!["--route", "/api/a=http://127.0.0.1:9 policy=admins"],
            "--route",
            "names no --policy",
        ),
        (
            vec!["--route", "/api/a=http://127.0.0.1:9 token=sometimes"],
            "--route",
            "token",
        ),
        (vec!["--route", "token=none"], "--route", "before any"),
        (
            // `run` gives no client secret: a public client has no token of its own.
            vec!["--route", "/api/a=http://127.0.0.1:9 token=client"],
            "--route /api/a",
            "needs a client secret",
        ),
        (
            vec!["--route", "/api/a=http://127.0.0.1:9 scope=orders.read"],
            "--route",
            "only with token=client",
        ),
        (vec!["--allow", "staff"], "--allow", "names no policy"),
        (
            vec!["--client-scopes", "orders\\read"],
            "--client-scopes",
            "not a scope",
        ),
        // The login's own scopes, checked the same way: a bad one used to start and then fail
        // every sign-in at the provider (`invalid_scope`).
        (
            vec!["--scopes", "profile orders\"read"],
            "--scopes",
            "not a scope",
        ),
        (vec!["--scopes", "profile\u{1}"], "--scopes", "not a scope"),
        (
            vec!["--policy", "admins=groups:"],
            "--policy",
            "empty value",
        ),
        (
            vec!["--policy", "a=groups:x", "--policy", "a=groups:y"],
            "--policy",
            "twice",
        ),
        // An acr value with a control character would go out in `acr_values` (found by
        // fuzzing); one with a space cannot come from this flag, whose spaces separate
        // policies (src/proxy/yarp.rs tests it from a file).
        (
            vec!["--policy", "strong=acr:gold|\u{8}silver"],
            "--policy",
            "acr value",
        ),
    ] {
        let (code, _, stderr) = run(&with(&extra));
        assert_eq!(code, 64, "{extra:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(reason),
            "{extra:?}: {stderr}"
        );
    }
}

#[test]
fn listen_stdin_without_a_listening_socket_says_what_systemd_needs() {
    let data = tempfile::tempdir().expect("dir");
    let data_dir = data.path().to_str().expect("utf-8");
    let (code, _, stderr) = run(&with(&["--listen-stdin", "--data-dir", data_dir]));
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("--listen-stdin") && stderr.contains("StandardInput=socket"),
        "{stderr}"
    );
    // A connected socket is no listening one either.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let output = Command::new(env!("CARGO_BIN_EXE_oidc-bff"))
        .args(with(&["--listen-stdin", "--data-dir", data_dir]))
        .env_remove("OIDC_BFF_CLIENT_SECRET")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            stream,
        )))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("not a listening one"), "{stderr}");
    let (code, _, stderr) = run(&with(&["--listen-stdin", "--listen", "127.0.0.1:9"]));
    assert_eq!(code, 64, "both: {stderr}");
}

#[test]
fn zero_worker_threads_is_refused() {
    let (code, _, stderr) = run(&with(&["--worker-threads", "0"]));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

#[test]
fn every_problem_is_listed_one_per_line() {
    let (code, _, stderr) = run(&[
        "serve",
        "--issuer",
        "http://203.0.113.7",
        "--client-id",
        "spa",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
        "--callback-path",
        "//evil",
    ]);
    assert_eq!(code, 64, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    for flag in ["--issuer", "--tls-cert", "--tls-key", "--callback-path"] {
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("oidc-bff: error: ") && line.contains(flag)),
            "{flag} missing in {stderr}"
        );
    }
}

#[test]
fn a_missing_required_flag_exits_64() {
    let (code, _, stderr) = run(&["serve", "--client-id", "spa"]);
    assert_eq!(code, 64);
    assert!(stderr.contains("--issuer"), "{stderr}");
}

#[test]
fn help_documents_every_flag_with_its_variable_and_version_works() {
    let (code, stdout, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--public-url",
        "--callback-path",
        "--issuer",
        "--client-id",
        "--client-secret-file",
        "--scopes",
        "--auth-param",
        "--tls-cert",
        "--tls-key",
        "--ca-file",
        "--data-dir",
        "--ticket-key-file",
        "--idle-timeout",
        "--session-lifetime",
        "--cache-capacity",
        "--cache-sliding",
        "--cache-absolute",
        "--db-cache",
        "--cookie-name",
        "--cookie-same-site",
        "--worker-threads",
    ] {
        assert!(stdout.contains(flag), "{flag} not in --help");
    }
    assert!(stdout.contains("OIDC_BFF_IDLE_TIMEOUT"));
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("oidc-bff "), "{stdout}");
    // A plain `cargo build` in a clone names its commit (build.rs asks git).
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    if let Some(head) = head {
        assert!(stdout.contains(&format!("commit {head}")), "{stdout}");
    }
}

#[test]
fn there_is_no_client_secret_flag() {
    let (code, _, stderr) = run(&with(&["--client-secret", "s3cret"]));
    assert_eq!(
        code, 64,
        "secrets are not taken on the command line: {stderr}"
    );
}

#[test]
fn a_bad_yarp_file_names_the_route_and_field() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("appsettings.json");
    std::fs::write(
        &path,
        r#"{"ReverseProxy": {"Routes": {"route1": {"ClusterId": "missing", "Match": {"Path": "/a/{**x}"}}}}}"#,
    )
    .expect("write");
    let (code, _, stderr) = run(&with(&["--proxy-config", path.to_str().expect("utf-8")]));
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("ReverseProxy.Routes.route1.ClusterId"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_config_validates_files_and_reaches_the_provider() {
    let provider = crate::support::FakeProvider::start(std::sync::Arc::new(
        oidc_bff::clock::ManualClock::starting_now(),
    ))
    .await;
    let certs = crate::support::certs::TestCerts::new();
    let issuer = provider.issuer.clone();
    let cert = certs.cert.to_str().expect("utf-8").to_owned();
    let key = certs.key.to_str().expect("utf-8").to_owned();
    let args = |issuer: &str| -> Vec<String> {
        [
            "check-config",
            "--issuer",
            issuer,
            "--client-id",
            "spa",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    };
    let good = args(&issuer);
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&good))
        .await
        .expect("task");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("discovery and signing keys ok"), "{out}");
    assert!(
        out.contains("--data-dir"),
        "the data directory checked: {out}"
    );
    assert!(out.contains("TLS certificate and key: ok"), "{out}");

    let port = crate::support::process::closed_port();
    let unreachable = args(&format!("http://127.0.0.1:{port}"));
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&unreachable))
        .await
        .expect("task");
    assert_eq!(code, 69, "an unreachable provider is EX_UNAVAILABLE: {err}");

    let mut mismatched = args(&issuer);
    mismatched[6] = certs.ca_pem.to_str().expect("utf-8").to_owned(); // the CA as the server cert
    mismatched[8] = key.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&mismatched))
        .await
        .expect("task");
    assert_eq!(code, 64, "a certificate that does not match its key: {err}");
}

#[test]
fn the_manual_page_and_completions_are_generated_from_the_flags() {
    let (code, page, _) = run(&["manpage"]);
    assert_eq!(code, 0);
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "roff output"
    );
    assert!(page.contains("oidc-bff"));
    assert!(
        page.contains("Exit status"),
        "the exit codes are documented"
    );
    // Every command's page, for the packages.
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, err) = run(&["manpage", "--dir", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    for name in [
        "oidc-bff",
        "oidc-bff-serve",
        "oidc-bff-sessions",
        "oidc-bff-sessions-revoke",
        "oidc-bff-check-config",
    ] {
        assert!(dir.path().join(format!("{name}.1")).is_file(), "{name}.1");
    }
    let serve = std::fs::read_to_string(dir.path().join("oidc-bff-serve.1")).expect("serve page");
    for text in ["route", "static\\-dir", "PROVIDER", "CONNECTION LIMITS"] {
        assert!(serve.contains(text), "the serve page has {text}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, _) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}");
        assert!(script.contains("oidc-bff"), "{shell}");
        assert!(
            script.contains("idle-timeout"),
            "{shell} completes serve's flags"
        );
    }
}

/// `serve` with the test certificate and `extra` flags.
fn serve_with(extra: &[&str]) -> (i32, String, String) {
    let certs = crate::support::certs::TestCerts::new();
    let mut args: Vec<String> = with(&[
        "--tls-cert",
        certs.cert.to_str().expect("utf-8"),
        "--tls-key",
        certs.key.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ])
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    run(&args)
}

/// `--data-dir DIR/data --ticket-key-file DIR/ticket.key`, the key file holding no key.
struct UnusableKey(Vec<String>);

impl UnusableKey {
    fn each(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

fn unusable_key_file(dir: &std::path::Path) -> UnusableKey {
    let key = dir.join("ticket.key");
    std::fs::write(&key, "not a key").expect("write");
    UnusableKey(vec![
        "--data-dir".into(),
        dir.join("data").to_str().expect("utf-8").into(),
        "--ticket-key-file".into(),
        key.to_str().expect("utf-8").into(),
    ])
}

#[test]
fn data_dir_problems_name_the_flag_and_say_it_once() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let (code, _, stderr) = serve_with(&["--data-dir", file.to_str().expect("utf-8")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(stderr.contains("a file is in the way"), "{stderr}");
    assert!(!stderr.contains("os error"), "no OS error number: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (code, _, stderr) = serve_with(&unusable_key_file(dir.path()).each());
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--ticket-key-file"), "{stderr}");
}

#[test]
fn certificate_files_that_are_not_pem_name_their_flag() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not pem").expect("write");
    let certs = crate::support::certs::TestCerts::new();
    for (flag, cert, key) in [
        ("--tls-cert", bad.as_path(), certs.key.as_path()),
        ("--tls-key", certs.cert.as_path(), bad.as_path()),
    ] {
        let (code, _, stderr) = run(&with(&[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--data-dir",
            dir.path().join("data").to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ]));
        assert_eq!(code, 64, "{stderr}");
        assert!(stderr.contains(&format!("{flag} ")), "{flag}: {stderr}");
        assert!(stderr.contains("bad.pem"), "{stderr}");
    }
}

#[test]
fn a_relative_route_url_says_what_to_write() {
    let (code, _, stderr) = run(&with(&["--route", "/api/x=notaurl"]));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--route"), "{stderr}");
    assert!(stderr.contains("not an absolute URL"), "{stderr}");
    assert!(stderr.contains("https://host"), "{stderr}");
    assert!(!stderr.contains("without a base"), "{stderr}");
}

#[test]
fn a_port_in_use_names_the_flag_and_exits_75() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, stderr) = run(&with(&[
        "--listen",
        &address,
        "--data-dir",
        dir.path().join("data").to_str().expect("utf-8"),
    ]));
    assert_eq!(code, 75, "EX_TEMPFAIL: {stderr}");
    assert!(stderr.contains(&format!("--listen {address}")), "{stderr}");
    assert!(stderr.contains("address in use"), "{stderr}");
}

#[test]
fn check_config_checks_the_data_directory_and_key_before_the_provider() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check-config",
            "--issuer",
            "https://id.example.com",
            "--client-id",
            "spa",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // A file where the directory should be: refused (exit 64) before the provider is asked.
    let (code, out, stderr) = check(&["--data-dir", file.to_str().expect("utf-8")]);
    assert_eq!(code, 64, "{out}{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(
        out.contains("self-signed"),
        "without --tls-cert it does not claim a certificate: {out}"
    );
    assert!(!out.contains("TLS certificate and key: ok"), "{out}");
    // Below a file: the directory could never be made.
    let under = file.join("data");
    let (code, _, stderr) = check(&["--data-dir", under.to_str().expect("utf-8")]);
    assert_eq!(code, 64, "{stderr}");
    // A key file that holds no key.
    let unusable = unusable_key_file(dir.path());
    let data = std::path::PathBuf::from(&unusable.0[1]);
    let (code, _, stderr) = check(&unusable.each());
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--ticket-key-file"), "{stderr}");
    assert!(!data.exists(), "check-config made nothing");
}

#[test]
fn serve_help_puts_the_essentials_first_in_groups_and_ends_with_an_example() {
    let (code, help, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    let at = |text: &str| {
        help.find(text)
            .unwrap_or_else(|| panic!("{text} in serve --help"))
    };
    let headings = [
        "Provider:",
        "Routes and the app:",
        "Listening and TLS:",
        "Sessions and storage:",
        "Connection limits:",
        "Logging:",
    ];
    for pair in headings.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{} before {}", pair[0], pair[1]);
    }
    assert!(at("--issuer") < at("--route") && at("--route") < at("--max-connections"));
    assert!(at("--static-dir") < at("--idle-timeout"));
    assert!(at("Example") > at("--log-level"), "the example comes last");
    // Commands that do not log have no log flags.
    let (_, manpage_help, _) = run(&["manpage", "--help"]);
    assert!(!manpage_help.contains("--log-level"), "{manpage_help}");
}
