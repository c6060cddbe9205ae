//! A real Redis for the tests: Debian's `redis-server`, started by the test on a free loopback
//! port with no persistence, and stopped (by its PID) when dropped. Never the system service,
//! never port 6379.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it saves its data at a clean shutdown (and loads it from at the next start).
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One inline command to a Redis (or sentinel) on 127.0.0.1:`port`; its raw answer.
fn inline_command(port: u16, command: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buffer = vec![0u8; 1 << 16];
    let read = stream.read(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..read]).into_owned())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        let child = Self::spawn(free_port(), dir.path(), &extra);
        let server = Self {
            port: child.1,
            child: child.0,
            dir,
            extra,
        };
        server.wait_ready();
        server
    }

    fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> (Child, u16) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--dir",
                dir.to_str().expect("utf-8"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)");
        (child, port)
    }

    /// Stops it cleanly, saving its data (`SHUTDOWN SAVE`), and waits for the exit.
    pub fn stop(&mut self) {
        let _ = self.command("SHUTDOWN SAVE");
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the data it saved.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(self.port, self.dir.path(), &self.extra).0;
        self.wait_ready();
    }

    /// Starts one that speaks TLS only (`rediss://`), with the test certificate.
    pub fn start_tls(certs: &super::certs::TestCerts) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let path = |path: &std::path::Path| path.to_str().expect("utf-8").to_owned();
        let extra = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&certs.cert),
            "--tls-key-file".to_owned(),
            path(&certs.key),
            "--tls-ca-cert-file".to_owned(),
            path(&certs.ca_pem),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        // `--port 0` after the defaults turns the plain port off.
        let (child, _) = Self::spawn(port, dir.path(), &extra);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self {
                    child,
                    port,
                    dir,
                    extra,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server with TLS on port {port} did not listen");
    }

    fn wait_ready(&self) {
        // At most 10 s.
        for _ in 0..500 {
            if self
                .command("PING")
                .is_some_and(|answer| answer.contains("PONG"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// Sends one inline command and returns the raw answer (for test setup and checks).
    pub fn command(&self, command: &str) -> Option<String> {
        inline_command(self.port, command)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Three `redis-server` masters joined into a cluster (`redis-cli --cluster create`), no
/// replicas.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters and creates the cluster; waits until every node says it is ok.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian: apt-get install redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for node in &nodes {
            let mut ok = false;
            for _ in 0..250 {
                if node
                    .command("CLUSTER INFO")
                    .is_some_and(|info| info.contains("cluster_state:ok"))
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(ok, "cluster node {} did not become ok", node.port);
        }
        Self { nodes }
    }

    /// `redis+cluster://` naming two of the nodes (the client finds the third).
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }
}

/// A primary, one replica and one sentinel watching them as `sessions`.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The primary at the start.
    pub primary: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    sentinel: Child,
    /// The sentinel's port.
    pub sentinel_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

impl RedisSentinel {
    /// Starts the three and waits until the replica is in sync and the sentinel knows both.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let replica_of = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
        let dir = tempfile::tempdir().expect("dir");
        let sentinel_port = free_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor sessions 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds sessions 1000\n\
                 sentinel failover-timeout sessions 5000\n",
                dir.path().display(),
                primary.port
            ),
        )
        .expect("write sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let cluster = Self {
            primary,
            replica,
            sentinel,
            sentinel_port,
            _dir: dir,
        };
        for _ in 0..500 {
            let synced = cluster
                .replica
                .command("INFO replication")
                .is_some_and(|info| info.contains("master_link_status:up"));
            let known = cluster
                .sentinel_command("SENTINEL replicas sessions")
                .is_some_and(|answer| answer.contains(&cluster.replica.port.to_string()));
            if synced && known {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the replica or the sentinel did not come up");
    }

    /// One inline command to the sentinel.
    pub fn sentinel_command(&self, command: &str) -> Option<String> {
        inline_command(self.sentinel_port, command)
    }

    /// `redis+sentinel://127.0.0.1:PORT/sessions`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/sessions", self.sentinel_port)
    }
}
