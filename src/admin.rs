//! Session administration for operators: `oidc-bff sessions list|show|revoke|stats`.
//!
//! redb allows one process per file, so while the server runs the command talks to it over a
//! Unix socket in the data directory (mode 0600; the peer must be the socket's owner or root);
//! when the server is stopped, the command opens the file itself. Both paths run the same
//! [`execute`]. Nothing here ever prints a token: listings show ids, subjects, names and times.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::session::SessionId;
use crate::tickets::TicketStore;

/// Largest request line accepted on the socket.
const MAX_REQUEST: usize = 64 * 1024;

/// Time a client of the socket has to send its request line (the CLI sends it at once).
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// A command, as sent over the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum AdminRequest {
    /// The first `limit` sessions, oldest first.
    List {
        /// How many.
        limit: usize,
    },
    /// One session.
    Show {
        /// Its id (80 hex digits, as `list` prints it).
        id: String,
        /// Every user claim of its ID token (email, groups, …), not only who and when.
        #[serde(default)]
        claims: bool,
    },
    /// End sessions.
    Revoke {
        /// Which.
        target: RevokeTarget,
    },
    /// Count, oldest session, file size.
    Stats,
}

/// Which sessions a revocation ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeTarget {
    /// One session by id.
    Id(String),
    /// Every session of a subject.
    Sub(String),
    /// Every session of a provider session id.
    Sid(String),
    /// Every session.
    All,
}

fn parse_id(text: &str) -> Result<SessionId, String> {
    SessionId::from_hex(text).ok_or_else(|| format!("{text:?} is not a session id (80 hex digits)"))
}

/// Runs a command against a store; the answer is JSON, errors are plain text.
pub async fn execute(
    tickets: &TicketStore,
    database: &Path,
    request: AdminRequest,
) -> Result<Value, String> {
    let failed = |error: crate::store::StoreError| crate::describe::error_chain(&error);
    match request {
        AdminRequest::List { limit } => {
            let rows = tickets.list(None, limit).await.map_err(failed)?;
            Ok(Value::Array(
                rows.into_iter()
                    .map(|(id, meta, ticket)| summary(id, &meta, ticket.as_ref()))
                    .collect(),
            ))
        }
        AdminRequest::Show { id, claims } => {
            let id = parse_id(&id)?;
            let rows = tickets
                .list(
                    Some(SessionId {
                        created_ms: id.created_ms,
                        hash: [0; 32],
                    }),
                    64,
                )
                .await
                .map_err(failed)?;
            let (id, meta, ticket) = rows
                .into_iter()
                .find(|(found, _, _)| *found == id)
                .ok_or_else(|| "no such session".to_owned())?;
            let mut value = summary(id, &meta, ticket.as_ref());
            // Personal data (email, groups, …) only when asked for: an operator looking at
            // who and when does not need it on screen or in a ticket paste.
            if claims
                && let Some(id_token) = ticket.as_ref().and_then(|t| t.tokens.id_token.as_ref())
            {
                let mut claims = crate::jwt::user_claims(id_token.expose());
                // With --userinfo, the claims the gateway judges include UserInfo's.
                let userinfo = ticket.as_ref().and_then(|t| t.userinfo.as_deref());
                if let Some(Ok(Value::Object(extra))) = userinfo.map(serde_json::from_str) {
                    claims.extend(extra.into_iter().filter(|(name, _)| name != "sub"));
                }
                value["claims"] = Value::Object(claims);
            }
            Ok(value)
        }
        AdminRequest::Revoke { target } => {
            let removed = match target {
                RevokeTarget::Id(id) => tickets.remove_ids(vec![parse_id(&id)?]).await,
                RevokeTarget::Sub(sub) => tickets.remove_by_subject(&sub).await,
                RevokeTarget::Sid(sid) => tickets.remove_by_provider_sid(&sid).await,
                RevokeTarget::All => {
                    let mut removed = 0;
                    loop {
                        let page = tickets.list(None, 1_000).await.map_err(failed)?;
                        if page.is_empty() {
                            break Ok(removed);
                        }
                        let ids = page.into_iter().map(|(id, _, _)| id).collect();
                        removed += tickets.remove_ids(ids).await.map_err(failed)?;
                    }
                }
            }
            .map_err(failed)?;
            Ok(json!({ "revoked": removed }))
        }
        AdminRequest::Stats => {
            let count = tickets.count().await.map_err(failed)?;
            let oldest = tickets
                .list(None, 1)
                .await
                .map_err(failed)?
                .first()
                .map(|(id, _, _)| id.created_ms / 1_000);
            // Redis has no file of ours to measure.
            let file_bytes = tickets
                .database()
                .map(|_| std::fs::metadata(database).map(|m| m.len()).unwrap_or(0));
            Ok(json!({ "sessions": count, "oldestCreated": oldest, "fileBytes": file_bytes }))
        }
    }
}

fn summary(
    id: SessionId,
    meta: &crate::store::Meta,
    ticket: Option<&crate::session::Ticket>,
) -> Value {
    let claims = ticket
        .and_then(|ticket| ticket.tokens.id_token.as_ref())
        .map(|token| crate::jwt::user_claims(token.expose()))
        .unwrap_or_default();
    json!({
        "id": id.to_hex(),
        "subject": ticket.map(|t| t.subject.clone()),
        "name": claims.get("name").cloned(),
        "providerSid": ticket.and_then(|t| t.provider_sid.clone()),
        "created": id.created_ms / 1_000,
        "lastAccess": meta.last_access,
        "expires": meta.deadline,
        "accessTokenExpires": ticket.and_then(|t| t.tokens.access_expires_at),
        "refreshable": ticket.is_some_and(|t| t.tokens.refresh_token.is_some()),
        "scope": ticket.and_then(|t| t.tokens.scope.clone()),
        // Which audience-bound tokens the session holds, and until when; never the tokens.
        "resources": ticket.map_or_else(Vec::new, |t| {
            t.resource_tokens
                .iter()
                .map(|token| json!({ "resource": token.resource, "expires": token.expires_at }))
                .collect()
        }),
        "readable": ticket.is_some(),
    })
}

/// Serves admin commands on a Unix socket until the task is dropped.
pub async fn serve_socket(
    path: PathBuf,
    tickets: Arc<TicketStore>,
    database: PathBuf,
) -> std::io::Result<()> {
    // The data directory is this process's (redb allows no other): a socket file left by a
    // previous run is stale.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(&path)?.uid();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: passing, so back off and keep serving
                // (returning would close the socket for the rest of the process's life).
                tracing::warn!(%error, "admin socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = stream.peer_cred().map(|cred| cred.uid()).ok();
        if !peer.is_some_and(|uid| uid == owner || uid == 0) {
            tracing::warn!(
                ?peer,
                "admin socket: refused a connection from another user"
            );
            continue;
        }
        let tickets = Arc::clone(&tickets);
        let database = database.clone();
        tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(
                reader,
                MAX_REQUEST as u64,
            ));
            // A client that connects and says nothing holds a task and a descriptor: cut off.
            match tokio::time::timeout(REQUEST_DEADLINE, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!("admin socket: no request in time");
                    return;
                }
            }
            let answer = match serde_json::from_str::<AdminRequest>(&line) {
                Ok(request) => {
                    tracing::info!(?request, "admin command");
                    match execute(&tickets, &database, request).await {
                        Ok(value) => json!({ "ok": value }),
                        Err(error) => json!({ "error": error }),
                    }
                }
                Err(error) => json!({ "error": format!("bad request: {error}") }),
            };
            let _ = writer.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

/// Sends one command to a running server. `Ok(None)` when no server listens there.
pub fn ask_server(socket: &Path, request: &AdminRequest) -> Result<Option<Value>, String> {
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(format!("admin socket {}: {error}", socket.display())),
    };
    let line = serde_json::to_string(request).map_err(|error| error.to_string())?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|error| format!("admin socket: {error}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|error| format!("admin socket: {error}"))?;
    let answer: Value =
        serde_json::from_str(&answer).map_err(|_| "admin socket: no answer".to_owned())?;
    match (answer.get("ok"), answer.get("error")) {
        (Some(ok), _) => Ok(Some(ok.clone())),
        (None, Some(error)) => Err(error.as_str().unwrap_or("error").to_owned()),
        _ => Err("admin socket: malformed answer".into()),
    }
}

/// Renders an answer for people.
pub fn render(request: &AdminRequest, value: &Value) -> String {
    match request {
        AdminRequest::List { .. } => {
            let mut out = String::from(
                "ID (prefix)  SUBJECT                  CREATED     LAST USE    EXPIRES\n",
            );
            for row in value.as_array().into_iter().flatten() {
                let id = row["id"].as_str().unwrap_or_default();
                out.push_str(&format!(
                    "{:<12} {:<24} {:<11} {:<11} {}\n",
                    id.get(16..24).unwrap_or(id),
                    row["subject"].as_str().unwrap_or("(unreadable)"),
                    row["created"],
                    row["lastAccess"],
                    row["expires"],
                ));
            }
            out
        }
        AdminRequest::Revoke { .. } => format!("revoked {} session(s)\n", value["revoked"]),
        AdminRequest::Stats => {
            let oldest = value["oldestCreated"]
                .as_i64()
                .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
                .map_or_else(
                    || "-".to_owned(),
                    |date| date.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                );
            let file = match value["fileBytes"].as_u64() {
                Some(bytes) => format!("database file:  {bytes} bytes\n"),
                None => String::new(),
            };
            format!(
                "sessions:       {}\noldest created: {oldest}\n{file}",
                value["sessions"]
            )
        }
        _ => format!(
            "{}\n",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip_through_hex() {
        let id = SessionId {
            created_ms: 1_700_000_000_123,
            hash: [0xab; 32],
        };
        assert_eq!(parse_id(&id.to_hex()), Ok(id));
        assert!(parse_id("zz").is_err());
        assert!(parse_id(&"a".repeat(79)).is_err());
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let request = AdminRequest::Revoke {
            target: RevokeTarget::Sub("alice".into()),
        };
        let text = serde_json::to_string(&request).expect("json");
        assert_eq!(text, r#"{"command":"revoke","target":{"sub":"alice"}}"#);
        assert_eq!(
            serde_json::from_str::<AdminRequest>(&text).expect("parse"),
            request
        );
    }
}
