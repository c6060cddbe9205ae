//! Crash safety: the real binary is killed with SIGKILL while browsers log in; every login it
//! acknowledged (a session cookie received) must be in the redb file afterwards.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oidc_bff::cache::CachePolicy;
use oidc_bff::clock::{ManualClock, SystemClock};
use oidc_bff::config::StorageConfig;
use oidc_bff::session::{SessionKey, SessionPolicy};
use oidc_bff::tickets::{Activity, MissingKey, open_data_dir};

use crate::support::browser::Browser;
use crate::support::certs::TestCerts;
use crate::support::process::{Port, gateway_command};
use crate::support::provider::FakeProvider;

#[tokio::test]
async fn sigkill_during_logins_loses_no_acknowledged_session() {
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    let certs = TestCerts::new();
    let data_dir = tempfile::tempdir().expect("data dir");
    let port = Port::bind();
    let base = format!("https://localhost:{port}");
    let mut child = gateway_command(&provider, &certs, data_dir.path(), &port)
        .spawn()
        .expect("start the gateway binary");

    Browser::new(&base, &certs).wait_healthy().await;

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let acknowledged = Arc::clone(&acknowledged);
        let base = base.clone();
        let ca = certs.ca_der.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let mut browser = Browser::with_ca(&base, ca.clone());
                let Some(cookie) = browser.try_login().await else {
                    return;
                };
                acknowledged.lock().expect("acks").push(cookie);
            }
        }));
    }
    // Let logins run, then kill mid-load once enough have been acknowledged.
    for _ in 0..200 {
        if acknowledged.lock().expect("acks").len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    // The test holds the port open (the gateway got it as standard input): close it too, so
    // that the workers' next logins are refused instead of waiting in its queue.
    drop(port);
    for worker in workers {
        let _ = worker.await;
    }
    let acknowledged = acknowledged.lock().expect("acks").clone();
    assert!(
        acknowledged.len() >= 40,
        "load ran: {} logins",
        acknowledged.len()
    );

    let storage = StorageConfig {
        data_dir: data_dir.path().to_owned(),
        ticket_key_file: data_dir.path().join("ticket.key"),
        db_cache_bytes: 1 << 20,
        redis: None,
    };
    let cache = CachePolicy {
        capacity: NonZeroUsize::new(16).expect("non-zero"),
        sliding: Duration::from_secs(15),
        absolute: Duration::from_secs(100),
    };
    let policy = SessionPolicy {
        idle_timeout: Duration::from_secs(8 * 3_600),
        lifetime: Duration::from_secs(7 * 86_400),
        refresh_skew: Duration::from_secs(30),
    };
    let (store, _) = open_data_dir(
        &storage,
        cache,
        policy,
        Arc::new(SystemClock),
        MissingKey::Create,
    )
    .expect("the file reopens after SIGKILL");
    let mut missing = BTreeMap::new();
    for cookie in &acknowledged {
        let key = SessionKey::parse(cookie).expect("cookie is a key");
        let found = store
            .retrieve(&key, Activity::Peek)
            .await
            .expect("retrieve");
        if found.is_none() {
            missing.insert(key.id().to_string(), ());
        }
    }
    assert!(missing.is_empty(), "sessions lost: {missing:?}");
}
