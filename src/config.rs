//! Command-line flags (each also read from an `OIDC_BFF_*` variable) and the typed [`Config`]
//! they become.
//!
//! Parsing happens once, here: values are checked by clap's value parsers (so a bad value names
//! its flag), then [`ServeArgs::resolve`] checks the combinations and reads the files flags point
//! to, collecting every problem so the operator sees them all at once.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use url::Url;

use crate::cache::CachePolicy;
use crate::session::{Secret, SessionPolicy};

/// Exit code for a configuration error (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

// The settings types belong to the modules they configure; these names stay for callers of the
// flags' results.
pub use crate::connection::ServerLimits;
pub use crate::cookies::{CookieConfig, SameSite};
pub use crate::oidc::OidcConfig;
pub use crate::path::check_local_path;
pub use crate::store::StorageConfig;
pub use crate::tls::TlsConfig;
pub use crate::urls::is_loopback_host;

/// The `oidc-bff` command line.
/// The version `--version` prints: the package version and the commit it was built from
/// (`OIDC_BFF_COMMIT` at build time: from the environment, else from git, see `build.rs`).
pub static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("OIDC_BFF_COMMIT")
    )
});

#[derive(Debug, Parser)]
#[command(
    name = "oidc-bff",
    version = VERSION.as_str(),
    about = "Backend-for-Frontend security gateway: OpenID Connect login, server-side sessions, \
             token relay",
    long_about = "oidc-bff keeps every OAuth token server-side. The browser holds only an \
                  HttpOnly session cookie; sessions live in an encrypted redb file.",
    after_long_help = EXIT_STATUS
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where log lines go and how many: the flags of every command that logs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format: text for people (journald adds the time), json for log pipelines.
    #[arg(
        long,
        help_heading = "Logging",
        env = "OIDC_BFF_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG wins when set.
    #[arg(
        long,
        help_heading = "Logging",
        env = "OIDC_BFF_LOG_LEVEL",
        default_value = "info",
        global = true,
        value_name = "LEVEL"
    )]
    pub log_level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `oidc-bff --help` and the manual page say of exit codes.
const EXIT_STATUS: &str = "Exit status: 0 success (serve: a clean shutdown); 64 a configuration \
error, with one line per problem naming the flag; 69 (check-config) the provider cannot be \
reached; 75 (serve) the --listen or --metrics-listen address is taken by another process; \
1 any other failure (the session database failed while running).

Every flag can also be set as the OIDC_BFF_* variable its help shows. Each command has its own \
page: oidc-bff-serve(1), oidc-bff-sessions(1), oidc-bff-check-config(1).";

/// The example at the end of `serve --help`: the flags a first installation needs.
const SERVE_EXAMPLE: &str =
    "Example (the provider's client is confidential; its secret comes from a file):

  oidc-bff serve \\
    --issuer https://login.example.com/realms/main --client-id my-spa \\
    --client-secret-file /etc/oidc-bff/client-secret \\
    --public-url https://app.example.com --listen 0.0.0.0:443 \\
    --tls-cert /etc/oidc-bff/cert.pem --tls-key /etc/oidc-bff/key.pem \\
    --route /api/orders=http://10.0.0.5:8080 --static-dir /srv/my-spa

Every flag can also be set as the OIDC_BFF_* variable shown. `man oidc-bff-serve` has the
same with room to read.";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    #[command(after_help = SERVE_EXAMPLE)]
    Serve(Box<ServeArgs>),
    /// Inspect and revoke sessions (through the running server's admin socket, or the file
    /// directly when the server is stopped). Never prints tokens.
    Sessions(Box<SessionsArgs>),
    /// Check a configuration without serving: every flag, the files they name (certificate,
    /// key, CA file, YARP file, SPA directory) and that the provider's discovery answers.
    /// Takes the same flags as `serve`; exits 0 when all is well.
    CheckConfig(Box<ServeArgs>),
    /// Print the manual page (roff) to standard output, or write every command's page
    /// (oidc-bff.1, oidc-bff-serve.1, …) into a directory, for packaging.
    Manpage {
        /// Write every command's page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script to standard output, for packaging.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Flags of `oidc-bff sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SessionsAction,

    /// The gateway's data directory [default: $STATE_DIRECTORY when set, else ./oidc-bff-data].
    #[arg(long, env = "OIDC_BFF_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// The running gateway's admin socket [default: <data dir>/admin.sock].
    #[arg(
        long,
        env = "OIDC_BFF_ADMIN_SOCKET",
        value_name = "PATH",
        global = true
    )]
    pub admin_socket: Option<PathBuf>,

    /// The ticket key the gateway uses (`serve --ticket-key-file`) [default: <data dir>/ticket.key];
    /// read when the server is stopped and the file is opened directly, never created.
    #[arg(
        long,
        env = "OIDC_BFF_TICKET_KEY_FILE",
        value_name = "PATH",
        global = true
    )]
    pub ticket_key_file: Option<PathBuf>,

    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,

    /// The session store the gateways use (`serve --store`): `redb` (the data directory's
    /// file, or the running gateway's admin socket) or a Redis URL, used directly (any gateway
    /// may run meanwhile).
    #[arg(
        long,
        env = "OIDC_BFF_STORE",
        default_value = "redb",
        value_name = "redb|URL",
        global = true
    )]
    pub store: String,

    /// File holding the Redis password (or OIDC_BFF_STORE_PASSWORD, or
    /// $CREDENTIALS_DIRECTORY/store-password).
    #[arg(
        long,
        env = "OIDC_BFF_STORE_PASSWORD_FILE",
        value_name = "PATH",
        global = true
    )]
    pub store_password_file: Option<PathBuf>,

    /// Extra trusted CA certificates (PEM) for `rediss://`.
    #[arg(long, env = "OIDC_BFF_CA_FILE", value_name = "PEM", global = true)]
    pub ca_file: Option<PathBuf>,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl SessionsArgs {
    /// The Redis store `--store` names, with its password; `None` for the redb file.
    pub fn redis(
        &self,
        env: &dyn Environment,
    ) -> Result<Option<crate::redis_url::RedisStore>, String> {
        redis_store(&self.store, self.store_password_file.as_deref(), env)
    }
}

/// The Redis store `store` names (a `--store` value, `redb` for none), with its password from
/// `password_file`, the environment or a systemd credential.
pub fn redis_store(
    store: &str,
    password_file: Option<&Path>,
    env: &dyn Environment,
) -> Result<Option<crate::redis_url::RedisStore>, String> {
    let Some(target) = crate::redis_url::StoreChoice::parse(store)
        .map_err(|error| format!("--store: {error}"))?
        .0
    else {
        return Ok(None);
    };
    let password = read_secret(
        password_file,
        SecretSource {
            flag: "--store-password-file",
            variable: STORE_PASSWORD_VARIABLE,
            fd_variable: STORE_PASSWORD_FD_VARIABLE,
            credential: "store-password",
        },
        env,
    )?;
    Ok(Some(crate::redis_url::RedisStore { target, password }))
}

/// Session commands.
#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// List sessions, oldest first.
    List {
        /// How many at most.
        #[arg(long, default_value = "100")]
        limit: usize,
    },
    /// Show one session (its claims and times; never its tokens).
    Show {
        /// The session id, as `list --json` prints it.
        id: String,
        /// Also print every user claim of the session's ID token (email, groups, …).
        #[arg(long)]
        claims: bool,
    },
    /// End sessions: one by id, or all of a subject, of a provider sid, or every one.
    Revoke {
        /// The session id, as `list --json` prints it.
        #[arg(required_unless_present_any = ["sub", "sid", "all"], conflicts_with_all = ["sub", "sid", "all"])]
        id: Option<String>,
        /// Every session of this subject.
        #[arg(long, conflicts_with_all = ["sid", "all"])]
        sub: Option<String>,
        /// Every session of this provider session id.
        #[arg(long, conflicts_with = "all")]
        sid: Option<String>,
        /// Every session.
        #[arg(long)]
        all: bool,
    },
    /// Number of sessions, the oldest one, and the database file size.
    Stats,
    /// Copy every live session of a redb data directory (`--data-dir`, gateway stopped; its
    /// key: `--ticket-key-file`, default <data dir>/ticket.key) into a Redis store, with its
    /// expiry, so that an appliance grows into several gateways without signing anyone out.
    /// The gateways on Redis need the same ticket key file.
    Migrate {
        /// The Redis store, as `serve --store` names it.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

impl SessionsAction {
    /// The admin request this action sends (`None` for `migrate`, which is no request to a
    /// gateway).
    pub fn request(&self) -> Option<crate::admin::AdminRequest> {
        use crate::admin::{AdminRequest, RevokeTarget};
        Some(match self {
            SessionsAction::Migrate { .. } => return None,
            SessionsAction::List { limit } => AdminRequest::List { limit: *limit },
            SessionsAction::Show { id, claims } => AdminRequest::Show {
                id: id.clone(),
                claims: *claims,
            },
            SessionsAction::Revoke { id, sub, sid, all } => AdminRequest::Revoke {
                target: match (id, sub, sid, all) {
                    (Some(id), _, _, _) => RevokeTarget::Id(id.clone()),
                    (_, Some(sub), _, _) => RevokeTarget::Sub(sub.clone()),
                    (_, _, Some(sid), _) => RevokeTarget::Sid(sid.clone()),
                    _ => RevokeTarget::All,
                },
            },
            SessionsAction::Stats => AdminRequest::Stats,
        })
    }
}

/// The data directory: the flag, else systemd's `$STATE_DIRECTORY`, else `./oidc-bff-data`.
pub fn data_dir(flag: Option<PathBuf>, env: &dyn Environment) -> PathBuf {
    flag.or_else(|| env.var("STATE_DIRECTORY").map(|dirs| first_path(&dirs)))
        .unwrap_or_else(|| PathBuf::from("oidc-bff-data"))
}

/// Flags of `oidc-bff serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The OpenID provider's issuer URL; discovery is read from its
    /// /.well-known/openid-configuration. Plain http is accepted only on a loopback address.
    #[arg(help_heading = "Provider", long, env = "OIDC_BFF_ISSUER", value_name = "URL", value_parser = parse_issuer)]
    pub issuer: String,

    /// The client id registered at the provider.
    #[arg(
        help_heading = "Provider",
        long,
        env = "OIDC_BFF_CLIENT_ID",
        value_name = "ID"
    )]
    pub client_id: String,

    /// File holding the client secret. Alternatives: the OIDC_BFF_CLIENT_SECRET variable, or
    /// systemd's $CREDENTIALS_DIRECTORY/client-secret. Never a plain flag: argv is visible in ps.
    /// With none of them the gateway acts as a public client (PKCE only).
    #[arg(
        help_heading = "Provider",
        long,
        env = "OIDC_BFF_CLIENT_SECRET_FILE",
        value_name = "PATH"
    )]
    pub client_secret_file: Option<PathBuf>,

    /// The origin browsers use to reach the gateway [default: https://localhost:<listen port>].
    #[arg(help_heading = "Provider", long, env = "OIDC_BFF_PUBLIC_URL", value_name = "URL", value_parser = crate::urls::absolute)]
    pub public_url: Option<Url>,

    /// Path the provider redirects back to after login (register public URL + this path).
    #[arg(
        help_heading = "Provider",
        long,
        env = "OIDC_BFF_CALLBACK_PATH",
        default_value = "/signin-oidc",
        value_name = "PATH"
    )]
    pub callback_path: String,

    /// Scopes to request, separated by spaces; `openid` is always included.
    #[arg(
        help_heading = "Provider",
        long,
        env = "OIDC_BFF_SCOPES",
        default_value = "openid profile offline_access"
    )]
    pub scopes: String,

    /// Fetch the provider's UserInfo at login and after every refresh, and lay its claims over
    /// the ID token's for policies, identity headers and /api/user (for providers that keep
    /// groups or email out of the ID token).
    #[arg(help_heading = "Provider", long, env = "OIDC_BFF_USERINFO")]
    pub userinfo: bool,

    /// Scopes of the gateway's own client-credentials token (routes with `token=client` or
    /// `user-or-client` that name no `scope=`), separated by spaces; none by default.
    #[arg(
        help_heading = "Provider",
        long,
        env = "OIDC_BFF_CLIENT_SCOPES",
        default_value = "",
        value_name = "SCOPES"
    )]
    pub client_scopes: String,

    /// Extra authorization-request parameter, e.g. `prompt=consent` (repeatable; in the
    /// environment, separate several with spaces).
    #[arg(help_heading = "Provider", long = "auth-param", env = "OIDC_BFF_AUTH_PARAMS", value_name = "KEY=VALUE",
          value_parser = parse_key_value, value_delimiter = ' ')]
    pub auth_params: Vec<(String, String)>,

    /// Extra trusted CA certificates (PEM) for connections to the provider and upstreams, on top
    /// of the system's roots.
    #[arg(
        help_heading = "Provider",
        long,
        env = "OIDC_BFF_CA_FILE",
        value_name = "PEM"
    )]
    pub ca_file: Option<PathBuf>,

    /// Route API calls under PREFIX to the upstream URL(s) with the session's access token as
    /// bearer, e.g. `/api/OtherApi1=http://127.0.0.1:7002` (repeatable; several URLs are
    /// balanced round-robin; in the environment, separate routes with spaces). Options may
    /// follow the URLs, space-separated: `token=user|optional-user|client|user-or-client|none`
    /// (which token goes upstream; `optional-user` sends the user's when signed in, else none
    /// and no 401; `client` the gateway's own client-credentials token; `user-or-client` the
    /// user's when signed in, else the gateway's), `scope=A,B` (the client token's scope,
    /// instead of `--client-scopes`), `resource=URI` (a token whose audience is that resource
    /// alone, RFC 8707), `policy=NAME` (callers must satisfy `--policy NAME`),
    /// `identity-headers=on` (`X-Auth-Request-User`, `-Email`, `-Preferred-Username`, `-Groups`
    /// from the user's claims).
    #[arg(help_heading = "Routes and the app", long = "route", env = "OIDC_BFF_ROUTES", value_name = "PREFIX=URL[,URL…] [KEY=VALUE…]",
          value_parser = crate::proxy::parse_route_piece, value_delimiter = ' ')]
    pub routes: Vec<crate::proxy::RoutePiece>,

    /// The sign-in parameters `/login` passes on to the provider, comma-separated, or `none`:
    /// `prompt` (none, login, consent, select_account), `login_hint` (up to 256 characters),
    /// `acr_values` (only values a policy's `acr:` rule names), `max_age` (seconds). Any other
    /// parameter, or a bad value, is a 400.
    #[arg(help_heading = "Routes and the app", long, env = "OIDC_BFF_LOGIN_PARAMS", value_name = "NAME[,NAME…]",
          default_value = "prompt,login_hint,acr_values,max_age", value_parser = crate::login_params::LoginParams::parse)]
    pub login_params: crate::login_params::LoginParams,

    /// An authorization policy routes can require (`policy=NAME`, YARP `AuthorizationPolicy`):
    /// `NAME=RULE[,RULE…]`, every rule must hold. Rules: `CLAIM:VALUE[|VALUE…]` (the ID token's
    /// claim equals a value, or is an array holding one), `CLAIM` (present, not false),
    /// `acr:VALUE[|…]`, `email-domain:DOMAIN[|…]`, `auth-age:DURATION` (signed in within),
    /// `scope:SCOPE[|…]` (granted to the session's access token).
    /// E.g. `admins=groups:admin|owner`. Repeatable; in the environment, space-separated.
    #[arg(help_heading = "Routes and the app", long = "policy", env = "OIDC_BFF_POLICIES", value_name = "NAME=RULE[,RULE…]",
          value_parser = crate::policy::Policy::parse, value_delimiter = ' ')]
    pub policies: Vec<crate::policy::Policy>,

    /// Whether `/login` names every route's `resource=` in the authorization request (RFC 8707;
    /// some providers grant only resources named there): `all` or `none`.
    #[arg(help_heading = "Routes and the app", long, env = "OIDC_BFF_LOGIN_RESOURCES", value_name = "all|none",
          default_value = "all", value_parser = ["all", "none"])]
    pub login_resources: String,

    /// Only users who satisfy this policy get a session: anyone else is refused at the
    /// callback with a page that says the account is not allowed here (like oauth2-proxy's
    /// allowed groups and email domains). Names a `--policy` or a YARP file's policy.
    #[arg(
        help_heading = "Routes and the app",
        long,
        env = "OIDC_BFF_ALLOW",
        value_name = "POLICY"
    )]
    pub allow: Option<String>,

    /// A YARP configuration file: an ASP.NET appsettings.json with a ReverseProxy section, or
    /// the section alone (Routes, Clusters, Transforms, LoadBalancingPolicy, …).
    #[arg(
        help_heading = "Routes and the app",
        long,
        env = "OIDC_BFF_PROXY_CONFIG",
        value_name = "FILE"
    )]
    pub proxy_config: Option<PathBuf>,

    /// Serve the built single-page app from DIR (e.g. Angular's dist/app/browser); unknown
    /// non-API paths get its index.html.
    #[arg(
        help_heading = "Routes and the app",
        long,
        env = "OIDC_BFF_STATIC_DIR",
        value_name = "DIR"
    )]
    pub static_dir: Option<PathBuf>,

    /// Development: send every path that is not the gateway's own or a route to this dev server
    /// (e.g. http://127.0.0.1:4200 for `ng serve`), without tokens. Instead of --static-dir.
    #[arg(help_heading = "Routes and the app", 
        long,
        env = "OIDC_BFF_FRONTEND_URL",
        value_name = "URL",
        value_parser = crate::urls::absolute,
        conflicts_with = "static_dir"
    )]
    pub frontend_url: Option<Url>,

    /// Pages allowed to frame the gateway's own pages and the app's files (origins such as
    /// https://portal.example.com, repeatable). Default: none (`frame-ancestors 'none'` and
    /// `X-Frame-Options: DENY`, against clickjacking).
    #[arg(help_heading = "Routes and the app", long = "frame-ancestors", env = "OIDC_BFF_FRAME_ANCESTORS", value_name = "ORIGIN",
          value_parser = parse_frame_ancestor, value_delimiter = ' ')]
    pub frame_ancestors: Vec<String>,

    /// Time an upstream has to start answering (502 when unreachable, 504 when too slow).
    #[arg(help_heading = "Routes and the app", long, env = "OIDC_BFF_UPSTREAM_TIMEOUT", default_value = "30s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub upstream_timeout: Duration,

    /// Largest request body forwarded upstream (larger gets 413).
    #[arg(help_heading = "Routes and the app", long, env = "OIDC_BFF_MAX_REQUEST_BODY", default_value = "10MiB",
          value_parser = parse_size, value_name = "SIZE")]
    pub max_request_body: usize,

    /// A WebSocket tunnel with no byte either way for this long is closed.
    #[arg(help_heading = "Routes and the app", long, env = "OIDC_BFF_WEBSOCKET_IDLE_TIMEOUT", default_value = "10m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub websocket_idle_timeout: Duration,

    /// A WebSocket tunnel is closed after this long in any case (the browser reconnects).
    #[arg(help_heading = "Routes and the app", long, env = "OIDC_BFF_WEBSOCKET_MAX_LIFETIME", default_value = "24h",
          value_parser = parse_duration, value_name = "DURATION")]
    pub websocket_max_lifetime: Duration,

    /// Address and port to listen on (TLS).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "OIDC_BFF_LISTEN",
        default_value = "127.0.0.1:8443",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Serve on the listening TCP socket given as standard input instead of binding --listen:
    /// systemd socket activation (a .socket unit, and `StandardInput=socket` in the service),
    /// which lets the gateway take port 443 without any privilege of its own, or inetd.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "OIDC_BFF_LISTEN_STDIN",
        conflicts_with = "listen"
    )]
    pub listen_stdin: bool,

    /// TLS certificate chain (PEM). Without --tls-cert and --tls-key a self-signed certificate
    /// for localhost, 127.0.0.1 and ::1 is generated at start.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "OIDC_BFF_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "OIDC_BFF_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, its own listener; bind it to
    /// a loopback or internal address) [default: off].
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "OIDC_BFF_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Threads that serve requests [default: the CPUs this process may run on]. With 1, a
    /// single-threaded scheduler serves everything, which costs less per request on one core.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "OIDC_BFF_WORKER_THREADS",
        value_name = "N"
    )]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// Directory for sessions.redb and the ticket key [default: $STATE_DIRECTORY when set,
    /// else ./oidc-bff-data].
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,

    /// Where sessions are kept: `redb` (the data directory's file: one gateway) or Redis shared
    /// by several gateways: `redis://[user@]host[:port][/db]`, `rediss://…` (TLS, trusting
    /// --ca-file too), `redis+sentinel://h1:26379,h2:26379/MASTER[/db]`,
    /// `redis+cluster://h1:7000,h2:7001` (`rediss+…` for TLS). Every gateway sharing a store
    /// needs the same --ticket-key-file. No password in the URL: see --store-password-file.
    // Checked when resolved, not by clap, whose error would quote a password given by mistake.
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_STORE",
        default_value = "redb",
        value_name = "redb|URL"
    )]
    pub store: String,

    /// File holding the Redis password. Alternatives: the OIDC_BFF_STORE_PASSWORD variable, or
    /// systemd's $CREDENTIALS_DIRECTORY/store-password.
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_STORE_PASSWORD_FILE",
        value_name = "PATH"
    )]
    pub store_password_file: Option<PathBuf>,

    /// Ticket encryption key file [default: <data dir>/ticket.key, generated on first start].
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_TICKET_KEY_FILE",
        value_name = "PATH"
    )]
    pub ticket_key_file: Option<PathBuf>,

    /// Unix socket for `oidc-bff sessions` while the server runs (mode 0600)
    /// [default: <data dir>/admin.sock].
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_ADMIN_SOCKET",
        value_name = "PATH"
    )]
    pub admin_socket: Option<PathBuf>,

    /// A session not used for this long ends (API calls count as use; isAuth does not).
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_IDLE_TIMEOUT", default_value = "8h", value_parser = parse_duration,
          value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// A session ends this long after login, however active.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_SESSION_LIFETIME", default_value = "7d", value_parser = parse_duration,
          value_name = "DURATION")]
    pub session_lifetime: Duration,

    /// Name of the session cookie. Keep the __Host- prefix: it stops subdomains from
    /// overwriting the cookie.
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_COOKIE_NAME",
        default_value = "__Host-bff",
        value_name = "NAME"
    )]
    pub cookie_name: String,

    /// SameSite attribute of the session cookie.
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_COOKIE_SAME_SITE",
        value_enum,
        default_value = "strict",
        value_name = "MODE"
    )]
    pub cookie_same_site: SameSite,

    /// An access token expiring within this is refreshed before it is used.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_REFRESH_SKEW", default_value = "30s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub refresh_skew: Duration,

    /// Time between background refresh sweeps (±10 % jitter).
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_REFRESH_INTERVAL", default_value = "60s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub refresh_interval: Duration,

    /// The refresh sweep renews access tokens that expire within this.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_REFRESH_AHEAD", default_value = "2m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub refresh_ahead: Duration,

    /// Most refreshes the sweep runs at once.
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_REFRESH_CONCURRENCY",
        default_value = "8",
        value_name = "N"
    )]
    pub refresh_concurrency: NonZeroUsize,

    /// Time between eviction sweeps, which remove idle and expired sessions.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_SWEEP_INTERVAL", default_value = "5m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub sweep_interval: Duration,

    /// Sessions kept decrypted in the in-memory LRU cache.
    #[arg(
        help_heading = "Sessions and storage",
        long,
        env = "OIDC_BFF_CACHE_CAPACITY",
        default_value = "10000",
        value_name = "N"
    )]
    pub cache_capacity: NonZeroUsize,

    /// A cached session not used for this long is dropped from the cache.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_CACHE_SLIDING", default_value = "15s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub cache_sliding: Duration,

    /// A cached session is re-read from disk at least this often.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_CACHE_ABSOLUTE", default_value = "100s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub cache_absolute: Duration,

    /// Page cache of the session database, e.g. 64MiB.
    #[arg(help_heading = "Sessions and storage", long, env = "OIDC_BFF_DB_CACHE", default_value = "64MiB", value_parser = parse_size,
          value_name = "SIZE")]
    pub db_cache: usize,

    /// Most connections served at once; more wait in the kernel's backlog.
    #[arg(
        help_heading = "Connection limits",
        long,
        env = "OIDC_BFF_MAX_CONNECTIONS",
        default_value = "10000",
        value_name = "N"
    )]
    pub max_connections: NonZeroUsize,

    /// Most connections (WebSocket tunnels included) from one client address (an IPv6 client
    /// counts by its /64); more are closed at once, so one address cannot take every slot.
    /// Behind a load balancer or reverse proxy, whose address every client has, raise it.
    #[arg(
        help_heading = "Connection limits",
        long,
        env = "OIDC_BFF_MAX_CONNECTIONS_PER_IP",
        default_value = "256",
        value_name = "N"
    )]
    pub max_connections_per_ip: NonZeroUsize,

    /// Time allowed for a TLS handshake.
    #[arg(help_heading = "Connection limits", long, env = "OIDC_BFF_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// Time allowed to receive a request's headers, from their first byte (HTTP/1.1).
    #[arg(help_heading = "Connection limits", long, env = "OIDC_BFF_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub header_timeout: Duration,

    /// A connection with no byte read or written for this long is closed (in-flight requests
    /// finish first); one still silent after twice this is dropped, even mid-response (a client
    /// that stopped reading; a streamed response that sends nothing for that long).
    #[arg(help_heading = "Connection limits", long, env = "OIDC_BFF_KEEPALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub keepalive_timeout: Duration,

    /// On SIGTERM/SIGINT, in-flight requests get this long to finish before the remaining
    /// connections are closed (0s: close at once).
    #[arg(help_heading = "Connection limits", long, env = "OIDC_BFF_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration,
          value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Most header bytes in one request (larger gets 431), e.g. 16KiB.
    #[arg(help_heading = "Connection limits", long, env = "OIDC_BFF_MAX_HEADER_BYTES", default_value = "16KiB", value_parser = parse_size,
          value_name = "SIZE")]
    pub max_header_bytes: usize,

    /// Most header fields in one request (more gets 431).
    #[arg(
        help_heading = "Connection limits",
        long,
        env = "OIDC_BFF_MAX_HEADERS",
        default_value = "100",
        value_name = "N"
    )]
    pub max_headers: usize,

    /// Longest request target accepted (longer gets 414).
    #[arg(help_heading = "Connection limits", long, env = "OIDC_BFF_MAX_URI_BYTES", default_value = "8KiB", value_parser = parse_size,
          value_name = "SIZE")]
    pub max_uri_bytes: usize,

    /// Most concurrent HTTP/2 streams per connection.
    #[arg(
        help_heading = "Connection limits",
        long,
        env = "OIDC_BFF_MAX_H2_STREAMS",
        default_value = "100",
        value_name = "N"
    )]
    pub max_h2_streams: u32,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Everything the gateway needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Serve on the listening socket that is standard input instead (`--listen-stdin`).
    pub listen_stdin: bool,
    /// What `/login` passes on to the provider.
    pub login_params: crate::login_params::LoginParams,
    /// `--login-resources all`: `/login` names every route's resource.
    pub login_resources: bool,
    /// The public origin, without a trailing slash (`https://host[:port]`).
    pub public_origin: String,
    /// Provider settings.
    pub oidc: OidcConfig,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Files on disk.
    pub storage: StorageConfig,
    /// Session lifetime policy.
    pub session: SessionPolicy,
    /// Cache settings.
    pub cache: CachePolicy,
    /// Cookie settings.
    pub cookie: CookieConfig,
    /// Limits against hostile clients.
    pub limits: ServerLimits,
    /// Reverse-proxy routes and limits.
    pub proxy: crate::proxy::ProxyConfig,
    /// The built SPA to serve, if any.
    pub static_dir: Option<PathBuf>,
    /// Origins allowed to frame the gateway's pages (`--frame-ancestors`); empty: none.
    pub frame_ancestors: Vec<String>,
    /// Background sweeps.
    pub sweeps: crate::tasks::SweepConfig,
    /// The admin socket for `oidc-bff sessions`.
    pub admin_socket: PathBuf,
    /// Where the metrics endpoint listens, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Threads serving requests.
    pub worker_threads: std::num::NonZeroUsize,
    /// Settings that work but weaken the gateway, one line each naming the flag; logged at
    /// start and printed by `check-config`.
    pub warnings: Vec<String>,
}

/// Every problem found in the flags, each naming its flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the environment comes from (the process's in production, a map in tests).
pub trait Environment {
    /// The value of a variable, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl ServeArgs {
    /// Settings that work but weaken the gateway (see [`Config::warnings`]).
    fn warnings(&self, env: &dyn Environment) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.client_secret_file.is_none()
            && (env
                .var(CLIENT_SECRET_VARIABLE)
                .is_some_and(|secret| !secret.is_empty())
                || env.var(CLIENT_SECRET_FD_VARIABLE).is_some())
        {
            warnings.push(
                "OIDC_BFF_CLIENT_SECRET: the client secret comes from the environment (this \
                 process took it out of its own, but whatever started it still has it, and \
                 the defaults file keeps it on disk); prefer --client-secret-file or systemd's \
                 LoadCredential"
                    .into(),
            );
        }
        if !self.cookie_name.starts_with("__Host-") {
            warnings.push(format!(
                "--cookie-name {}: without the __Host- prefix, a sibling subdomain can plant a \
                 cookie of that name for this host (session fixation); keep __Host-",
                self.cookie_name
            ));
        }
        if let Some(address) = self
            .metrics_listen
            .filter(|address| !address.ip().is_loopback())
        {
            warnings.push(format!(
                "--metrics-listen {address}: not a loopback address; anyone who reaches it reads \
                 session and request counts without authentication (firewall it, or listen on \
                 127.0.0.1)"
            ));
        }
        warnings
    }

    /// Checks the flags together, reads the client secret, and produces the [`Config`].
    pub fn resolve(self, env: &dyn Environment) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();

        let public_origin = match &self.public_url {
            None => format!("https://localhost:{}", self.listen.port()),
            Some(url) => match origin_of(url) {
                Ok(origin) => origin,
                Err(problem) => {
                    errors.push(format!("--public-url: {problem}"));
                    String::new()
                }
            },
        };

        if let Err(problem) = check_local_path(&self.callback_path) {
            errors.push(format!("--callback-path: {problem}"));
        } else if is_reserved_path(&self.callback_path) {
            errors.push(format!(
                "--callback-path: {} is one of the gateway's own paths",
                self.callback_path
            ));
        }

        if let Err(problem) = crate::urls::absolute(&self.issuer).and_then(|url| check_issuer(&url))
        {
            errors.push(format!("--issuer: {problem}"));
        }
        if self.client_id.trim().is_empty() {
            errors.push("--client-id: must not be empty".into());
        }

        let client_secret = match read_client_secret(self.client_secret_file.as_deref(), env) {
            Ok(secret) => secret,
            Err(problem) => {
                errors.push(problem);
                None
            }
        };
        let confidential_client = client_secret.is_some();
        let redis = redis_store(&self.store, self.store_password_file.as_deref(), env)
            .unwrap_or_else(|problem| {
                errors.push(problem);
                None
            });
        let warnings = self.warnings(env);

        let mut scopes: Vec<String> = vec!["openid".into()];
        for scope in self.scopes.split_whitespace() {
            // Checked as --client-scopes are (RFC 6749 §3.3), so that a bad one stops the start
            // instead of every sign-in at the provider (`invalid_scope`).
            if let Err(problem) = crate::policy::check_scope(scope) {
                errors.push(format!("--scopes: {problem}"));
            } else if !scopes.iter().any(|known| known == scope) {
                scopes.push(scope.to_owned());
            }
        }
        let client_scopes = if self.client_scopes.trim().is_empty() {
            Vec::new()
        } else {
            crate::proxy::client_scope(self.client_scopes.split_ascii_whitespace())
                .map(|scope| scope.split(' ').map(str::to_owned).collect())
                .unwrap_or_else(|problem| {
                    errors.push(format!("--client-scopes: {problem}"));
                    Vec::new()
                })
        };
        for (key, _) in &self.auth_params {
            if RESERVED_AUTH_PARAMS.contains(&key.as_str()) {
                errors.push(format!(
                    "--auth-param: {key} is set by the gateway itself and cannot be overridden"
                ));
            }
        }

        if !is_cookie_name(&self.cookie_name) {
            errors.push(format!(
                "--cookie-name: {:?} is not a valid cookie name (letters, digits and -_.)",
                self.cookie_name
            ));
        }

        for (flag, value) in [
            ("--idle-timeout", self.idle_timeout),
            ("--session-lifetime", self.session_lifetime),
            ("--cache-sliding", self.cache_sliding),
            ("--cache-absolute", self.cache_absolute),
            ("--handshake-timeout", self.handshake_timeout),
            ("--header-timeout", self.header_timeout),
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--refresh-interval", self.refresh_interval),
            ("--sweep-interval", self.sweep_interval),
            ("--websocket-idle-timeout", self.websocket_idle_timeout),
            ("--websocket-max-lifetime", self.websocket_max_lifetime),
        ] {
            if value.is_zero() {
                errors.push(format!("{flag}: must be longer than zero"));
            }
        }
        if self.max_header_bytes < 1024 {
            errors.push("--max-header-bytes: must be at least 1KiB".into());
        }

        let flag_policies = match crate::policy::Policies::new(self.policies) {
            Ok(policies) => policies,
            Err(error) => {
                errors.push(format!("--policy: {error}"));
                crate::policy::Policies::default()
            }
        };
        let (file_routes, policies) = match &self.proxy_config {
            Some(path) => match crate::proxy::yarp::load(path, &flag_policies) {
                Ok(loaded) => loaded,
                Err(problems) => {
                    for problem in problems {
                        errors.push(format!("--proxy-config {}: {problem}", path.display()));
                    }
                    (Vec::new(), flag_policies.clone())
                }
            },
            None => (Vec::new(), flag_policies.clone()),
        };
        let flag_routes = crate::proxy::group_routes(self.routes).unwrap_or_else(|error| {
            errors.push(format!("--route: {error}"));
            Vec::new()
        });
        let routes = crate::proxy::ProxyConfig::assemble(
            &flag_routes,
            file_routes,
            self.frontend_url.as_ref(),
            &policies,
            confidential_client,
        )
        .unwrap_or_else(|problems| {
            for problem in problems {
                errors.push(format!("--route {problem}"));
            }
            Vec::new()
        });
        if let Some(name) = self
            .allow
            .as_ref()
            .filter(|name| policies.get(name).is_none())
        {
            errors.push(format!(
                "--allow: {name:?} names no policy (a --policy flag or the YARP file's \
                 oidc-bff.Policies)"
            ));
        }
        if let Some(url) = self
            .frontend_url
            .as_ref()
            .filter(|url| !matches!(url.scheme(), "http" | "https") || url.host().is_none())
        {
            errors.push(format!("--frontend-url: {url} is not an http(s) URL"));
        }
        if let Some(dir) = self
            .static_dir
            .as_ref()
            .filter(|dir| !dir.join("index.html").is_file())
        {
            errors.push(format!("--static-dir: {} has no index.html", dir.display()));
        }
        for (flag, path) in [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--ca-file", &self.ca_file),
        ] {
            if let Some(path) = path.as_ref().filter(|path| !path.is_file()) {
                errors.push(format!("{flag}: {} is not a readable file", path.display()));
            }
        }

        let data_dir = data_dir(self.data_dir.clone(), env);
        let admin_socket = self
            .admin_socket
            .clone()
            .unwrap_or_else(|| StorageConfig::default_admin_socket(&data_dir));
        let ticket_key_file = self
            .ticket_key_file
            .clone()
            .unwrap_or_else(|| StorageConfig::default_ticket_key_file(&data_dir));

        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsConfig::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => TlsConfig::SelfSigned,
        };

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }

        let redirect_uri = Url::parse(&format!("{public_origin}{}", self.callback_path))
            .map_err(|error| ConfigErrors(vec![format!("--callback-path: {error}")]))?;
        let post_logout_redirect_uri = Url::parse(&format!("{public_origin}/"))
            .map_err(|error| ConfigErrors(vec![format!("--public-url: {error}")]))?;

        Ok(Config {
            listen: self.listen,
            listen_stdin: self.listen_stdin,
            login_params: self.login_params,
            login_resources: self.login_resources == "all",
            public_origin: public_origin.clone(),
            oidc: OidcConfig {
                issuer: self.issuer,
                client_id: self.client_id,
                client_secret,
                scopes,
                client_scopes,
                userinfo: self.userinfo,
                auth_params: self.auth_params,
                callback_path: self.callback_path,
                redirect_uri,
                post_logout_redirect_uri,
                ca_file: self.ca_file,
            },
            tls,
            storage: StorageConfig {
                data_dir,
                ticket_key_file,
                db_cache_bytes: self.db_cache,
                redis,
            },
            admin_socket,
            metrics_listen: self.metrics_listen,
            warnings,
            // Respects the CPU affinity mask and cgroup quota (taskset, systemd's CPUAffinity=).
            worker_threads: self.worker_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
            }),
            session: SessionPolicy {
                idle_timeout: self.idle_timeout,
                lifetime: self.session_lifetime,
                refresh_skew: self.refresh_skew,
            },
            cache: CachePolicy {
                capacity: self.cache_capacity,
                sliding: self.cache_sliding,
                absolute: self.cache_absolute,
            },
            cookie: CookieConfig {
                name: self.cookie_name,
                same_site: self.cookie_same_site,
            },
            limits: ServerLimits {
                max_connections: self.max_connections.get(),
                max_connections_per_ip: self.max_connections_per_ip.get(),
                handshake_timeout: self.handshake_timeout,
                header_timeout: self.header_timeout,
                keepalive_timeout: self.keepalive_timeout,
                shutdown_timeout: self.shutdown_timeout,
                max_header_bytes: self.max_header_bytes,
                max_headers: self.max_headers,
                max_uri_bytes: self.max_uri_bytes,
                max_h2_streams: self.max_h2_streams,
            },
            proxy: crate::proxy::ProxyConfig {
                public_origin,
                routes: std::sync::Arc::new(routes),
                file: self.proxy_config,
                flag_routes,
                flag_policies,
                policies: std::sync::Arc::new(policies),
                confidential_client,
                allow: self.allow,
                frontend: self.frontend_url,
                upstream_timeout: self.upstream_timeout,
                max_request_body: self.max_request_body,
                tunnel_limits: crate::proxy::TunnelLimits {
                    idle: self.websocket_idle_timeout,
                    lifetime: self.websocket_max_lifetime,
                },
            },
            static_dir: self.static_dir,
            frame_ancestors: self.frame_ancestors,
            sweeps: crate::tasks::SweepConfig {
                refresh_interval: self.refresh_interval,
                refresh_ahead: self.refresh_ahead,
                refresh_concurrency: self.refresh_concurrency.get(),
                sweep_interval: self.sweep_interval,
            },
        })
    }
}

/// Authorization-request parameters the gateway sets itself; overriding them would break
/// the security of the flow.
const RESERVED_AUTH_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// Paths the gateway answers itself; the callback must not shadow them.
fn is_reserved_path(path: &str) -> bool {
    matches!(
        path,
        "/" | "/login"
            | "/logout"
            | "/healthz"
            | "/api/isAuth"
            | "/api/user"
            | "/backchannel-logout"
    )
}

fn first_path(state_directory: &str) -> PathBuf {
    // systemd lists several directories separated by ':' when several are configured.
    PathBuf::from(state_directory.split(':').next().unwrap_or(state_directory))
}

/// The variable that may hold the client secret (the binary moves it out of its environment
/// at start, see `main.rs`).
pub const CLIENT_SECRET_VARIABLE: &str = "OIDC_BFF_CLIENT_SECRET";

/// Names the inherited pipe the binary hands the secret of [`CLIENT_SECRET_VARIABLE`] over
/// through, after taking it out of its environment.
pub const CLIENT_SECRET_FD_VARIABLE: &str = "OIDC_BFF_CLIENT_SECRET_FD";

/// The store password in the environment (`--store redis://…`).
pub const STORE_PASSWORD_VARIABLE: &str = "OIDC_BFF_STORE_PASSWORD";

/// Names the inherited pipe the binary hands [`STORE_PASSWORD_VARIABLE`] over through.
pub const STORE_PASSWORD_FD_VARIABLE: &str = "OIDC_BFF_STORE_PASSWORD_FD";

/// Every secret that may come in the environment, with the variable that names the pipe the
/// binary hands it over through after taking it out of its environment (see `main.rs`).
pub const SECRET_VARIABLES: [(&str, &str); 2] = [
    (CLIENT_SECRET_VARIABLE, CLIENT_SECRET_FD_VARIABLE),
    (STORE_PASSWORD_VARIABLE, STORE_PASSWORD_FD_VARIABLE),
];

fn read_client_secret(
    file: Option<&Path>,
    env: &dyn Environment,
) -> Result<Option<Secret>, String> {
    read_secret(
        file,
        SecretSource {
            flag: "--client-secret-file",
            variable: CLIENT_SECRET_VARIABLE,
            fd_variable: CLIENT_SECRET_FD_VARIABLE,
            credential: "client-secret",
        },
        env,
    )
}

/// Where a secret may come from, in order: a file flag, a variable (handed over through a
/// pipe once `main.rs` took it out of the environment), a systemd credential.
struct SecretSource {
    flag: &'static str,
    variable: &'static str,
    fd_variable: &'static str,
    credential: &'static str,
}

fn read_secret(
    file: Option<&Path>,
    source: SecretSource,
    env: &dyn Environment,
) -> Result<Option<Secret>, String> {
    let from_file = |path: &Path, source: &str| -> Result<Option<Secret>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{source}: cannot read {}: {error}", path.display()))?;
        let secret = text.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            return Err(format!("{source}: {} is empty", path.display()));
        }
        Ok(Some(Secret::new(secret)))
    };
    if let Some(path) = file {
        return from_file(path, source.flag);
    }
    if let Some(secret) = env.var(source.variable).filter(|s| !s.is_empty()) {
        return Ok(Some(Secret::new(secret)));
    }
    if let Some(fd) = env.var(source.fd_variable) {
        // The pipe the binary wrote the variable's value to before re-executing itself
        // without it; read through /proc, which needs no unsafe file-descriptor adoption.
        let fd: u32 = fd
            .parse()
            .map_err(|_| format!("{}: {fd:?} is not a descriptor", source.fd_variable))?;
        let secret = std::fs::read_to_string(format!("/proc/self/fd/{fd}"))
            .map_err(|error| format!("{}: cannot read it back: {error}", source.variable))?;
        if !secret.is_empty() {
            return Ok(Some(Secret::new(secret)));
        }
    }
    if let Some(dir) = env.var("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(source.credential);
        if path.exists() {
            return from_file(
                &path,
                &format!("$CREDENTIALS_DIRECTORY/{}", source.credential),
            );
        }
    }
    Ok(None)
}

fn origin_of(url: &Url) -> Result<String, String> {
    if url.scheme() != "https" {
        return Err(format!(
            "{url} must use https: browsers only keep Secure cookies over https"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{url} must be an origin only (no path, query or fragment)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{url} must not contain credentials"));
    }
    Ok(url.origin().ascii_serialization())
}

fn check_issuer(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(url) => Ok(()),
        "http" => Err(format!(
            "{url} uses plain http, which is accepted only on a loopback address"
        )),
        other => Err(format!("{url}: unsupported scheme {other}")),
    }
}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses a `--frame-ancestors` origin: `https://host[:port]` (or `http://` for a loopback
/// development page), nothing after the authority, or `'self'`.
pub fn parse_frame_ancestor(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "'self'" {
        return Ok(text.to_owned());
    }
    let url = crate::urls::absolute(text)?;
    let origin = url.origin().ascii_serialization();
    let plain = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
    if !plain || !matches!(url.scheme(), "https" | "http") || origin == "null" {
        return Err(format!(
            "{text:?}: an origin such as https://portal.example.com (scheme, host, port only)"
        ));
    }
    Ok(origin)
}

pub use crate::units::{parse_duration, parse_size};

fn parse_issuer(text: &str) -> Result<String, String> {
    crate::urls::absolute(text)?;
    Ok(text.to_owned())
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} must look like KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);

    impl Environment for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn args(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec![
            "oidc-bff",
            "serve",
            "--issuer",
            "https://id.example.com",
            "--client-id",
            "spa",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv)?;
        let Command::Serve(serve) = cli.command else {
            panic!("serve expected");
        };
        Ok(*serve)
    }

    fn no_env() -> MapEnv {
        MapEnv(HashMap::new())
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let config = args(&[])
            .expect("parse")
            .resolve(&no_env())
            .expect("resolve");
        assert_eq!(config.listen, "127.0.0.1:8443".parse().expect("addr"));
        assert_eq!(config.public_origin, "https://localhost:8443");
        assert_eq!(
            config.oidc.redirect_uri.as_str(),
            "https://localhost:8443/signin-oidc"
        );
        assert_eq!(config.oidc.scopes, ["openid", "profile", "offline_access"]);
        assert_eq!(config.session.idle_timeout, Duration::from_secs(8 * 3_600));
        assert_eq!(config.session.lifetime, Duration::from_secs(7 * 86_400));
        assert_eq!(config.cache.capacity.get(), 10_000);
        assert_eq!(config.cache.sliding, Duration::from_secs(15));
        assert_eq!(config.cache.absolute, Duration::from_secs(100));
        assert_eq!(config.storage.db_cache_bytes, 64 << 20);
        assert_eq!(config.storage.data_dir, PathBuf::from("oidc-bff-data"));
        assert_eq!(config.cookie.name, "__Host-bff");
        assert_eq!(config.cookie.same_site, SameSite::Strict);
        assert!(matches!(config.tls, TlsConfig::SelfSigned));
        assert!(config.oidc.client_secret.is_none());
    }

    #[test]
    fn openid_is_always_requested_once() {
        let config = args(&["--scopes", "email openid email"])
            .expect("parse")
            .resolve(&no_env())
            .expect("resolve");
        assert_eq!(config.oidc.scopes, ["openid", "email"]);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let error = args(&["--idle-timeout", "8x"]).expect_err("bad duration");
        assert!(error.to_string().contains("--idle-timeout"), "{error}");
        let error = args(&["--tls-cert", "c.pem"]).expect_err("cert without key");
        assert!(error.to_string().contains("--tls-key"), "{error}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = args(&[
            "--public-url",
            "http://example.com",
            "--callback-path",
            "//evil",
            "--auth-param",
            "state=fixed",
        ])
        .expect("parse")
        .resolve(&no_env())
        .expect_err("invalid");
        let text = errors.to_string();
        for flag in ["--public-url", "--callback-path", "--auth-param"] {
            assert!(text.contains(flag), "{flag} missing from {text}");
        }
    }

    #[test]
    fn plain_http_issuer_only_on_loopback() {
        let base = ["oidc-bff", "serve", "--client-id", "c", "--issuer"];
        for (issuer, ok) in [
            ("http://127.0.0.1:9000", true),
            ("http://[::1]:9000", true),
            ("http://localhost:9000/realms/x", true),
            ("http://10.0.0.1:9000", false),
            ("http://id.example.com", false),
        ] {
            let mut argv = base.to_vec();
            argv.push(issuer);
            let Command::Serve(serve) = Cli::try_parse_from(argv).expect("parse").command else {
                panic!("serve expected");
            };
            assert_eq!(serve.resolve(&no_env()).is_ok(), ok, "{issuer}");
        }
    }

    #[test]
    fn weakening_settings_are_named_as_warnings() {
        let config = args(&[])
            .expect("parse")
            .resolve(&no_env())
            .expect("resolve");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let env = MapEnv(HashMap::from([(
            "OIDC_BFF_CLIENT_SECRET",
            "from-env".into(),
        )]));
        let config = args(&["--cookie-name", "bff", "--metrics-listen", "0.0.0.0:9100"])
            .expect("parse")
            .resolve(&env)
            .expect("resolve");
        let named = |flag: &str| config.warnings.iter().any(|line| line.starts_with(flag));
        assert!(named("OIDC_BFF_CLIENT_SECRET"), "{:?}", config.warnings);
        assert!(named("--cookie-name bff"), "{:?}", config.warnings);
        assert!(
            named("--metrics-listen 0.0.0.0:9100"),
            "{:?}",
            config.warnings
        );
        assert!(
            !config.warnings.iter().any(|line| line.contains("from-env")),
            "a warning carried the secret"
        );
        let config = args(&["--metrics-listen", "127.0.0.1:9100"])
            .expect("parse")
            .resolve(&no_env())
            .expect("resolve");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn client_secret_comes_from_env_file_or_credentials() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").expect("write");
        let path = file.to_str().expect("utf-8");
        let config = args(&["--client-secret-file", path])
            .expect("parse")
            .resolve(&no_env())
            .expect("resolve");
        assert_eq!(
            config.oidc.client_secret.expect("secret").expose(),
            "from-file"
        );

        let env = MapEnv(HashMap::from([(
            "OIDC_BFF_CLIENT_SECRET",
            "from-env".into(),
        )]));
        let config = args(&[]).expect("parse").resolve(&env).expect("resolve");
        assert_eq!(
            config.oidc.client_secret.expect("secret").expose(),
            "from-env"
        );

        std::fs::write(dir.path().join("client-secret"), "from-systemd").expect("write");
        let env = MapEnv(HashMap::from([(
            "CREDENTIALS_DIRECTORY",
            dir.path().display().to_string(),
        )]));
        let config = args(&[]).expect("parse").resolve(&env).expect("resolve");
        assert_eq!(
            config.oidc.client_secret.expect("secret").expose(),
            "from-systemd"
        );
    }

    #[test]
    fn the_store_is_redb_by_default_and_a_redis_password_never_comes_from_the_url() {
        let config = args(&[])
            .expect("parse")
            .resolve(&no_env())
            .expect("resolve");
        assert!(config.storage.redis.is_none());
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("store-password");
        std::fs::write(&file, "from-file\n").expect("write");
        let path = file.to_str().expect("utf-8");
        let redis = |argv: &[&str], env: &MapEnv| {
            args(argv)
                .expect("parse")
                .resolve(env)
                .expect("resolve")
                .storage
                .redis
                .expect("redis")
        };
        let from_file = redis(
            &[
                "--store",
                "redis://127.0.0.1:7379/1",
                "--store-password-file",
                path,
            ],
            &no_env(),
        );
        assert_eq!(from_file.target.display(), "redis://127.0.0.1:7379/1");
        assert_eq!(from_file.password.expect("password").expose(), "from-file");
        let env = MapEnv(HashMap::from([(
            "OIDC_BFF_STORE_PASSWORD",
            "from-env".into(),
        )]));
        let from_env = redis(&["--store", "redis://127.0.0.1:7379"], &env);
        assert_eq!(from_env.password.expect("password").expose(), "from-env");
        std::fs::write(dir.path().join("store-password"), "from-systemd").expect("write");
        let env = MapEnv(HashMap::from([(
            "CREDENTIALS_DIRECTORY",
            dir.path().display().to_string(),
        )]));
        let from_systemd = redis(&["--store", "redis://127.0.0.1:7379"], &env);
        assert_eq!(
            from_systemd.password.expect("password").expose(),
            "from-systemd"
        );
        assert!(
            redis(&["--store", "redis://127.0.0.1:7379"], &no_env())
                .password
                .is_none()
        );
        let refused = args(&["--store", "redis://gw:secret@127.0.0.1/?x"])
            .expect("parse")
            .resolve(&no_env())
            .expect_err("a password in the URL")
            .to_string();
        assert!(
            refused.contains("--store") && refused.contains("visible"),
            "{refused}"
        );
        assert!(
            !refused.contains("secret"),
            "the password was echoed: {refused}"
        );
    }

    #[test]
    fn state_directory_is_the_default_data_dir() {
        let env = MapEnv(HashMap::from([(
            "STATE_DIRECTORY",
            "/var/lib/oidc-bff".into(),
        )]));
        let config = args(&[]).expect("parse").resolve(&env).expect("resolve");
        assert_eq!(config.storage.data_dir, PathBuf::from("/var/lib/oidc-bff"));
        assert_eq!(
            config.storage.ticket_key_file,
            PathBuf::from("/var/lib/oidc-bff/ticket.key")
        );
    }

    #[test]
    fn durations_and_sizes_parse_like_people_write_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(28_800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("16KiB"), Ok(16 << 10));
        assert!(parse_size("12XB").is_err());
    }

    #[test]
    fn local_paths_reject_open_redirect_tricks() {
        for good in ["/", "/app/orders?id=3", "/a//b"] {
            assert!(check_local_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "/a\\b",
            "evil",
            "/a\nb",
        ] {
            assert!(check_local_path(bad).is_err(), "{bad:?}");
        }
    }
}
