//! The `oidc-bff` binary: flags → config, logging, runtime, signals, exit codes. Everything else
//! lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use oidc_bff::RunError;
use oidc_bff::clock::SystemClock;
use oidc_bff::config::{Cli, Command, EXIT_CONFIG, LogArgs, LogFormat, ProcessEnvironment};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if let Some(code) = scrub_secret_from_environment() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are not errors; everything else is a configuration error.
            let code = if error.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    // The commands that print pages and scripts do not log.
    match &cli.command {
        Command::Serve(args) | Command::CheckConfig(args) => init_logging(&args.log),
        Command::Sessions(args) => init_logging(&args.log),
        Command::Manpage { .. } | Command::Completions { .. } => {}
    }
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Sessions(args) => sessions(*args),
        Command::CheckConfig(args) => check_config(*args),
        Command::Manpage { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            let written = match dir {
                Some(dir) => clap_mangen::generate_to(command, dir),
                None => clap_mangen::Man::new(command).render(&mut std::io::stdout()),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("oidc-bff: error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "oidc-bff", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// Logs to stderr as `log` says (`RUST_LOG` wins over `--log-level`).
fn init_logging(log: &LogArgs) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into journald or a log file; journald
    // stamps each line itself, so the time is left out there.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Text lines escape every control character in every field: outside text (a provider's
    // answer, a path) cannot forge a line or reach the reader's terminal.
    // The access log has a writer of its own (buffered, never in a request's way); it writes
    // to the same stream, whole batches of lines at a time.
    let format = match log.log_format {
        LogFormat::Text => oidc_bff::access_log::LineFormat::Text { time: !journald },
        LogFormat::Json => oidc_bff::access_log::LineFormat::Json,
    };
    match oidc_bff::access_log::Sink::start(Box::new(oidc_bff::access_log::Stderr), format) {
        Ok(sink) => {
            oidc_bff::access_log::install(sink);
        }
        Err(error) => {
            eprintln!("oidc-bff: warning: access log writer: {error}; lines go unbuffered")
        }
    }
    match (log.log_format, journald) {
        (LogFormat::Text, false) => logs.fmt_fields(oidc_bff::logging::EscapedFields).init(),
        (LogFormat::Text, true) => logs
            .fmt_fields(oidc_bff::logging::EscapedFields)
            .without_time()
            .init(),
        (LogFormat::Json, _) => logs.json().flatten_event(true).init(),
    }
}

/// Checks the serve flags; on failure prints one line per problem and gives exit code 64.
fn resolve(args: oidc_bff::config::ServeArgs) -> Result<oidc_bff::config::Config, ExitCode> {
    args.resolve(&ProcessEnvironment).map_err(|errors| {
        for problem in &errors.0 {
            eprintln!("oidc-bff: error: {problem}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Exit code when the configuration is fine but the provider cannot be reached
/// (EX_UNAVAILABLE from sysexits.h).
const EXIT_UNAVAILABLE: u8 = 69;

/// Exit code when the listening address is taken by another process: the configuration may be
/// right and a later start succeed (EX_TEMPFAIL from sysexits.h).
const EXIT_TEMPFAIL: u8 = 75;

/// Says why `address` (from `flag`) could not be listened on; the exit code: 75 when another
/// process has it, 64 (the flag's value is wrong for this host) otherwise.
fn bind_failed(flag: &str, address: std::net::SocketAddr, error: &std::io::Error) -> ExitCode {
    let (reason, code) = match error.kind() {
        std::io::ErrorKind::AddrInUse => (
            format!("address in use: another process listens there; stop it or choose another {flag}"),
            EXIT_TEMPFAIL,
        ),
        std::io::ErrorKind::AddrNotAvailable => (
            "no interface of this host has that address".to_owned(),
            EXIT_CONFIG,
        ),
        std::io::ErrorKind::PermissionDenied => (
            "permission denied: ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it)"
                .to_owned(),
            EXIT_CONFIG,
        ),
        _ => (oidc_bff::describe::io_reason(error), EXIT_CONFIG),
    };
    eprintln!("oidc-bff: error: {flag} {address}: {reason}");
    ExitCode::from(code)
}

fn check_config(args: oidc_bff::config::ServeArgs) -> ExitCode {
    let config = match resolve(args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    println!("flags: ok");
    for warning in &config.warnings {
        eprintln!("oidc-bff: warning: {warning}");
    }
    match oidc_bff::tls::certified_key(&config.tls) {
        Ok((_, oidc_bff::tls::CertificateSource::Files)) => {
            println!("TLS certificate and key: ok, and they belong together");
        }
        Ok((_, oidc_bff::tls::CertificateSource::SelfSigned)) => println!(
            "TLS: no --tls-cert, so each start makes a self-signed certificate for localhost \
             (for trying it out; browsers warn)"
        ),
        Err(error) => {
            eprintln!("oidc-bff: error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    match oidc_bff::tickets::check_data_dir(&config.storage) {
        Ok(found) => {
            for line in found {
                println!("{line}");
            }
        }
        Err(error) => {
            eprintln!(
                "oidc-bff: error: {}",
                oidc_bff::describe::error_chain(&error)
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let client_tls = match oidc_bff::tls::client_config(config.oidc.ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("oidc-bff: error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("proxy routes: {} loaded", config.proxy.routes.len());
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("oidc-bff: error: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    let store = runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(15),
            oidc_bff::tickets::check_store(&config.storage, &client_tls),
        )
        .await
    });
    match store {
        Ok(Ok(Some(line))) => println!("{line}"),
        Ok(Ok(None)) => {}
        Ok(Err(error)) => {
            eprintln!(
                "oidc-bff: error: {}",
                oidc_bff::describe::error_chain(&error)
            );
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        Err(_) => {
            eprintln!("oidc-bff: error: --store: the session store did not answer within 15 s");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    }
    let issuer = config.oidc.issuer.clone();
    let discovered = runtime.block_on(async move {
        let http =
            oidc_bff::http_client::HttpClient::new(client_tls, std::time::Duration::from_secs(10));
        let provider =
            oidc_bff::oidc::Provider::new(config.oidc, http, std::sync::Arc::new(SystemClock));
        provider.discover().await
    });
    match discovered {
        Ok(()) => {
            println!("provider {issuer}: discovery and signing keys ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("oidc-bff: error: provider {issuer}: {error}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn sessions(args: oidc_bff::config::SessionsArgs) -> ExitCode {
    let data_dir = oidc_bff::config::data_dir(args.data_dir.clone(), &ProcessEnvironment);
    let redis = match args.redis(&ProcessEnvironment) {
        Ok(redis) => redis,
        Err(error) => {
            eprintln!("oidc-bff: error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let storage = oidc_bff::config::StorageConfig {
        // The same key as `serve` uses, and never a new one.
        ticket_key_file: args
            .ticket_key_file
            .clone()
            .unwrap_or_else(|| oidc_bff::config::StorageConfig::default_ticket_key_file(&data_dir)),
        data_dir: data_dir.clone(),
        db_cache_bytes: 16 << 20,
        redis,
    };
    let Some(request) = args.action.request() else {
        let oidc_bff::config::SessionsAction::Migrate { to } = &args.action else {
            unreachable!("every other action is a request");
        };
        return migrate(storage, to, &args);
    };
    let answer = if storage.redis.is_some() {
        // Redis is shared: the command works on it directly, whichever gateways run.
        open_and_execute(storage, args.ca_file.as_deref(), request.clone())
    } else {
        let socket = args
            .admin_socket
            .clone()
            .unwrap_or_else(|| oidc_bff::config::StorageConfig::default_admin_socket(&data_dir));
        match oidc_bff::admin::ask_server(&socket, &request) {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => {
                let database = storage.database_path();
                if database.is_file() {
                    open_and_execute(storage, None, request.clone()).map_err(|error| {
                        format!("{error} (is the server running with another --admin-socket?)")
                    })
                } else {
                    Err(format!("no session database at {}", database.display()))
                }
            }
            Err(error) => Err(error),
        }
    };
    match answer {
        Ok(value) if args.json => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Ok(value) => {
            print!("{}", oidc_bff::admin::render(&request, &value));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("oidc-bff: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Expiry is not judged by the session commands: the policy only matters to lookups, which
/// they do not make. Nothing is cached either.
fn admin_policies() -> (
    oidc_bff::cache::CachePolicy,
    oidc_bff::session::SessionPolicy,
) {
    (
        oidc_bff::cache::CachePolicy {
            capacity: std::num::NonZeroUsize::MIN,
            sliding: std::time::Duration::ZERO,
            absolute: std::time::Duration::ZERO,
        },
        oidc_bff::session::SessionPolicy {
            idle_timeout: std::time::Duration::from_secs(u64::from(u32::MAX)),
            lifetime: std::time::Duration::from_secs(u64::from(u32::MAX)),
            refresh_skew: std::time::Duration::ZERO,
        },
    )
}

/// The TLS client (`--ca-file` for `rediss://`) and the one-thread runtime of a session
/// command.
fn admin_runtime(
    ca_file: Option<&std::path::Path>,
) -> Result<(rustls::ClientConfig, tokio::runtime::Runtime), String> {
    let client_tls = oidc_bff::tls::client_config(ca_file).map_err(|error| error.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    Ok((client_tls, runtime))
}

/// Opens the store (the file when no server runs, or Redis) and runs one session command.
fn open_and_execute(
    storage: oidc_bff::config::StorageConfig,
    ca_file: Option<&std::path::Path>,
    request: oidc_bff::admin::AdminRequest,
) -> Result<serde_json::Value, String> {
    let (client_tls, runtime) = admin_runtime(ca_file)?;
    runtime.block_on(async {
        let (cache, policy) = admin_policies();
        let database = storage.database_path();
        let (tickets, _) = open_for_admin(&storage, cache, policy, &client_tls).await?;
        oidc_bff::admin::execute(&tickets, &database, request).await
    })
}

async fn open_for_admin(
    storage: &oidc_bff::config::StorageConfig,
    cache: oidc_bff::cache::CachePolicy,
    policy: oidc_bff::session::SessionPolicy,
    client_tls: &rustls::ClientConfig,
) -> Result<(oidc_bff::tickets::TicketStore, oidc_bff::seal::MasterKey), String> {
    let opening = oidc_bff::tickets::open_store(
        storage,
        cache,
        policy,
        std::sync::Arc::new(SystemClock),
        oidc_bff::tickets::MissingKey::Refuse,
        client_tls,
    );
    // Redis that does not answer: say so rather than wait for ever.
    match tokio::time::timeout(std::time::Duration::from_secs(10), opening).await {
        Ok(opened) => opened.map_err(|error| oidc_bff::describe::error_chain(&error)),
        Err(_) => Err("the session store did not answer within 10 s".into()),
    }
}

/// `oidc-bff sessions migrate --to URL`: every live session of the data directory's redb file
/// into Redis, sealed as it is, with its expiry.
fn migrate(
    storage: oidc_bff::config::StorageConfig,
    to: &str,
    args: &oidc_bff::config::SessionsArgs,
) -> ExitCode {
    if storage.redis.is_some() {
        eprintln!(
            "oidc-bff: error: migrate reads the redb file: leave --store at redb, and name the Redis store with --to"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let target = match oidc_bff::config::redis_store(
        to,
        args.store_password_file.as_deref(),
        &ProcessEnvironment,
    ) {
        Ok(Some(redis)) => oidc_bff::config::StorageConfig {
            redis: Some(redis),
            ..storage.clone()
        },
        Ok(None) => {
            eprintln!("oidc-bff: error: --to: name a Redis store (redis://…)");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            eprintln!("oidc-bff: error: --to: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !storage.database_path().is_file() {
        eprintln!(
            "oidc-bff: error: no session database at {}",
            storage.database_path().display()
        );
        return ExitCode::FAILURE;
    }
    let copied = (|| {
        let (client_tls, runtime) = admin_runtime(args.ca_file.as_deref())?;
        runtime.block_on(async {
            let (cache, policy) = admin_policies();
            // The file: only when no gateway has it open (redb allows one process).
            let (from, _) = open_for_admin(&storage, cache, policy, &client_tls)
                .await
                .map_err(|error| format!("{error} (stop the gateway before migrating)"))?;
            let (into, _) = open_for_admin(&target, cache, policy, &client_tls).await?;
            from.copy_into(&into)
                .await
                .map_err(|error| oidc_bff::describe::error_chain(&error))
        })
    })();
    match copied {
        Ok((copied, expired)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "copied": copied, "expired": expired })
                );
            } else {
                println!("copied {copied} session(s); {expired} already expired and left out");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("oidc-bff: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: oidc_bff::config::ServeArgs) -> ExitCode {
    let config = match resolve(args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // One thread: the current-thread scheduler, without the work-stealing machinery that has
    // nothing to steal from (measured: about 15 % more proxied requests per second on one core).
    let mut builder = if config.worker_threads.get() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.worker_threads.get());
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("oidc-bff: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve_on(config));
    // Every access line of the requests served reaches the log before the process ends.
    oidc_bff::access_log::flush();
    code
}

async fn serve_on(config: oidc_bff::config::Config) -> ExitCode {
    let listener = if config.listen_stdin {
        match listener_from_stdin() {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!(
                    "oidc-bff: error: --listen-stdin: standard input is not a listening TCP \
                         socket ({error}); under systemd, pair the service with a .socket unit \
                         and set StandardInput=socket"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => return bind_failed("--listen", config.listen, &error),
        }
    };
    let metrics_listener = match config.metrics_listen {
        None => None,
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => return bind_failed("--metrics-listen", address, &error),
        },
    };
    let (reload, reloads) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the certificate and the proxy configuration");
            reload.send_modify(|count| *count += 1);
        }
    });
    let deps = oidc_bff::Deps {
        clock: std::sync::Arc::new(SystemClock),
        reload: Some(reloads),
        metrics_listener,
    };
    match oidc_bff::run(config, listener, deps, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Unreadable certificates and key files are the operator's configuration too.
            let code = match &error {
                RunError::Tls(_) | RunError::Open(_) | RunError::Spa(_) => {
                    ExitCode::from(EXIT_CONFIG)
                }
                RunError::Store(_) => ExitCode::FAILURE,
            };
            eprintln!(
                "oidc-bff: error: {}",
                oidc_bff::describe::error_chain(&error)
            );
            code
        }
    }
}

/// The listening socket that standard input is (systemd's `StandardInput=socket`, inetd).
fn listener_from_stdin() -> std::io::Result<tokio::net::TcpListener> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    if !rustix::net::sockopt::socket_acceptconn(&fd)? {
        return Err(std::io::Error::other("a socket, but not a listening one"));
    }
    let listener = std::net::TcpListener::from(fd);
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

/// Takes the secrets that may come in the environment (`OIDC_BFF_CLIENT_SECRET`,
/// `OIDC_BFF_STORE_PASSWORD`) out of the process's environment when one is there: the process
/// re-executes itself (same PID, so systemd's supervision is undisturbed) without them, and
/// hands each over through an inherited pipe named by its `…_FD` variable. Removing a variable
/// in place would not do: `/proc/<pid>/environ` shows the environment block the process started
/// with, whatever is unset later, and any process of the same user (or a crash dump) can read
/// it. After the exec, that block no longer holds them. `None` when there is nothing to do (or
/// the new image runs); the exit code when the exec failed.
fn scrub_secret_from_environment() -> Option<ExitCode> {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;

    let mut command = std::process::Command::new("/proc/self/exe");
    let mut pipes = Vec::new();
    for (variable, fd_variable) in oidc_bff::config::SECRET_VARIABLES {
        let Some(secret) = std::env::var_os(variable) else {
            continue;
        };
        let (reader, mut writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(error) => {
                eprintln!("oidc-bff: error: cannot hand {variable} over: {error}");
                return Some(ExitCode::FAILURE);
            }
        };
        // A secret is at most a few hundred bytes: the pipe's buffer holds it without a reader.
        let written = writer.write_all(secret.as_encoded_bytes());
        drop(writer);
        let inherited = rustix::io::fcntl_setfd(reader.as_fd(), rustix::io::FdFlags::empty());
        if let Err(error) = written.and(inherited.map_err(std::io::Error::from)) {
            eprintln!("oidc-bff: error: cannot hand {variable} over: {error}");
            return Some(ExitCode::FAILURE);
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
        command
            .env_remove(variable)
            .env(fd_variable, fd.to_string());
        pipes.push(reader);
    }
    if pipes.is_empty() {
        return None;
    }
    // `/proc/self/exe`: this very binary, even if a package upgrade replaced the file.
    let error = command
        .arg0(std::env::args_os().next().unwrap_or_default())
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("oidc-bff: error: cannot re-execute without the secrets in the environment: {error}");
    Some(ExitCode::FAILURE)
}
