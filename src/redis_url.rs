//! Where the session store is (`--store`): the data directory's redb file, or Redis, with its
//! topology (standalone, sentinel, cluster) and TLS, as operators write it; and the password,
//! which never comes from the URL. The connection itself is `redis_store.rs`'s.

use crate::session::Secret;

/// Where Redis is (`--store`), without the password (it comes from a file or the environment,
/// never from argv).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Standalone, cluster or behind sentinels.
    pub topology: Topology,
    /// TLS (`rediss://`), trusting the system roots and `--ca-file`.
    pub tls: bool,
    /// The ACL user, if any.
    pub username: Option<String>,
    /// The logical database (standalone and sentinel only).
    pub database: Option<u8>,
}

/// How the Redis servers are arranged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://host:port`).
    Standalone(String, u16),
    /// A cluster; any of its nodes (`redis+cluster://h1:7000,h2:7001`).
    Cluster(Vec<(String, u16)>),
    /// A primary found through sentinels (`redis+sentinel://h1:26379,h2:26379/MASTER`).
    Sentinel {
        /// The sentinels.
        sentinels: Vec<(String, u16)>,
        /// The monitored primary's name.
        service: String,
    },
}

/// `--store`: the data directory's redb file, or Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChoice(pub Option<RedisTarget>);

impl StoreChoice {
    /// Parses `redb` or a Redis URL ([`RedisTarget::parse`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "redb" => Ok(Self(None)),
            _ => RedisTarget::parse(text).map(|target| Self(Some(target))),
        }
    }
}

/// Redis as the session store: where, and the password (kept out of argv and logs).
#[derive(Debug, Clone)]
pub struct RedisStore {
    /// Where.
    pub target: RedisTarget,
    /// The password, from a file, the environment or a systemd credential.
    pub password: Option<Secret>,
}

/// The password in a `--store` URL: refused, since the URL is a flag that `ps` shows.
const PASSWORD_IN_URL: &str = "a password in the URL would be visible to every local user \
     (ps, /proc); give it in OIDC_BFF_STORE_PASSWORD, --store-password-file or \
     $CREDENTIALS_DIRECTORY/store-password";

fn host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match text.rsplit_once(':') {
        // An IPv6 literal in brackets, with or without a port.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (text, None),
    };
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{text:?}: the port is not a number from 1 to 65535"))?,
        None => default_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(format!("{text:?}: not a host[:port]"));
    }
    Ok((host.to_owned(), port))
}

impl RedisTarget {
    /// Parses `redis://[user@]host[:port][/db]`, `rediss://…`,
    /// `redis+sentinel://h1:26379,h2:26379/MASTER[/db]` (`rediss+sentinel` for TLS) or
    /// `redis+cluster://h1:7000,h2:7001` (`rediss+cluster`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not redb or a redis:// URL"))?;
        let (tls, kind) = match scheme {
            "redis" => (false, ""),
            "rediss" => (true, ""),
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            _ => {
                return Err(format!(
                    "{scheme}:// is not one of redis, rediss, redis+sentinel, redis+cluster \
                     (rediss+… for TLS)"
                ));
            }
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // Before anything that quotes the URL back: it may hold a password.
        if authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
        {
            return Err(PASSWORD_IN_URL.into());
        }
        if rest.contains('?') || rest.contains('#') {
            return Err(format!("{text:?}: no query or fragment is read"));
        }
        let (username, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) if !user.is_empty() => (Some(user.to_owned()), hosts),
            Some((_, hosts)) => (None, hosts),
            None => (None, authority),
        };
        let default_port = if kind == "sentinel" { 26379 } else { 6379 };
        let hosts: Vec<(String, u16)> = hosts
            .split(',')
            .map(|host| host_port(host, default_port))
            .collect::<Result<_, _>>()?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let database = |segment: Option<&&str>| -> Result<Option<u8>, String> {
            segment
                .map(|db| {
                    db.parse::<u8>()
                        .map_err(|_| format!("{text:?}: the database {db:?} is not 0 to 255"))
                })
                .transpose()
        };
        let (topology, database) = match kind {
            "sentinel" => {
                let service = segments
                    .first()
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| {
                        format!("{text:?}: name the primary: redis+sentinel://HOSTS/MASTER[/db]")
                    })?;
                if segments.len() > 2 {
                    return Err(format!("{text:?}: only /MASTER[/db] may follow the hosts"));
                }
                (
                    Topology::Sentinel {
                        sentinels: hosts,
                        service: (*service).to_owned(),
                    },
                    database(segments.get(1))?,
                )
            }
            "cluster" => {
                if !segments.is_empty() {
                    return Err(format!(
                        "{text:?}: a cluster has one database: nothing may follow the hosts"
                    ));
                }
                (Topology::Cluster(hosts), None)
            }
            _ => {
                let [(host, port)] = hosts.as_slice() else {
                    return Err(format!(
                        "{text:?}: one host for redis://; several are redis+cluster:// or \
                         redis+sentinel://"
                    ));
                };
                if segments.len() > 1 {
                    return Err(format!("{text:?}: only /db may follow the host"));
                }
                (
                    Topology::Standalone(host.clone(), *port),
                    database(segments.first())?,
                )
            }
        };
        Ok(Self {
            topology,
            tls,
            username,
            database,
        })
    }

    /// The URL again, for logs (there is no password in it).
    pub fn display(&self) -> String {
        let scheme = |base: &str| format!("{base}{}", if self.tls { "s" } else { "" });
        let hosts = |hosts: &[(String, u16)]| {
            hosts
                .iter()
                .map(|(host, port)| format!("{host}:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let user = self
            .username
            .as_ref()
            .map_or_else(String::new, |user| format!("{user}@"));
        let db = self
            .database
            .map_or_else(String::new, |db| format!("/{db}"));
        match &self.topology {
            Topology::Standalone(host, port) => {
                format!("{}://{user}{host}:{port}{db}", scheme("redis"))
            }
            Topology::Cluster(nodes) => {
                format!("{}+cluster://{user}{}", scheme("redis"), hosts(nodes))
            }
            Topology::Sentinel { sentinels, service } => format!(
                "{}+sentinel://{user}{}/{service}{db}",
                scheme("redis"),
                hosts(sentinels)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_into_topologies_and_refuse_passwords() {
        let standalone = RedisTarget::parse("redis://cache.internal:6380/2").expect("url");
        assert_eq!(
            standalone.topology,
            Topology::Standalone("cache.internal".into(), 6380)
        );
        assert_eq!(standalone.database, Some(2));
        assert!(!standalone.tls);
        let tls = RedisTarget::parse("rediss://gateway@[::1]").expect("url");
        assert_eq!(tls.topology, Topology::Standalone("::1".into(), 6379));
        assert_eq!(tls.username.as_deref(), Some("gateway"));
        assert!(tls.tls);
        let sentinel = RedisTarget::parse("redis+sentinel://s1,s2:26380/sessions/1").expect("url");
        assert_eq!(
            sentinel.topology,
            Topology::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                service: "sessions".into()
            }
        );
        assert_eq!(sentinel.database, Some(1));
        let cluster = RedisTarget::parse("rediss+cluster://n1:7000,n2:7001").expect("url");
        assert_eq!(
            cluster.topology,
            Topology::Cluster(vec![("n1".into(), 7000), ("n2".into(), 7001)])
        );
        for (bad, reason) in [
            ("redis://user:secret@h", "password"),
            ("redis://:secret@h", "password"),
            ("http://h", "not one of"),
            ("h:6379", "not redb"),
            ("redis://h:0", "port"),
            ("redis://h:99999", "port"),
            ("redis://h1,h2", "one host"),
            ("redis://h/300", "0 to 255"),
            ("redis://h/1/2", "only /db"),
            ("redis+sentinel://s1", "name the primary"),
            ("redis+cluster://n1/0", "nothing may follow"),
            ("redis://h?x=1", "no query"),
            ("redis://", "host"),
        ] {
            let error = RedisTarget::parse(bad).expect_err(bad);
            assert!(error.contains(reason), "{bad}: {error}");
        }
        for url in [
            "redis://cache.internal:6380/2",
            "rediss+sentinel://s1:26379,s2:26380/sessions/1",
            "redis+cluster://n1:7000,n2:7001",
        ] {
            assert_eq!(RedisTarget::parse(url).expect("url").display(), url);
        }
    }
}
