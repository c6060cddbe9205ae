//! Whole logins per second through the gateway, at 1, 8 and 64 at once: `/login`, the
//! provider's authorize redirect, the callback (code exchange, ID token check, the session's
//! durable commit in the redb file) and `/api/isAuth`, against the in-process provider of the
//! integration tests (ES256 ID tokens, so that signing them costs little), over TLS, in one
//! process. What group commit buys shows at 8 and 64: concurrent logins share an fsync.
//!
//! Run: `cargo bench --bench logins` (`BENCH_LOGINS`, default 600 per concurrency).

// A benchmark measures real time (clippy.toml bans the real clocks in the crate).
#![allow(clippy::disallowed_methods)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::sync::Arc;
use std::time::Instant;

use support::{Alg, FakeProvider, TestGateway};

async fn logins_per_second(gateway: &Arc<TestGateway>, count: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let gateway = Arc::clone(gateway);
            let share = count / concurrency + usize::from(worker < count % concurrency);
            tokio::spawn(async move {
                for _ in 0..share {
                    // A new browser each time: a first visit, as most logins are.
                    gateway.browser().login_ok().await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let count: usize = std::env::var("BENCH_LOGINS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let provider = FakeProvider::start_with(
            Arc::new(oidc_bff::clock::ManualClock::starting_now()),
            Alg::Es256,
        )
        .await;
        let gateway = Arc::new(TestGateway::start(&provider, &[]).await);
        // Warm-up: connections, discovery, the provider's keys.
        logins_per_second(&gateway, 32, 8).await;
        println!("{count} whole logins at each concurrency (in-process provider, TLS, redb file)");
        println!("| at once | logins/s |");
        println!("|---|---|");
        for concurrency in [1, 8, 64] {
            let rate = logins_per_second(&gateway, count, concurrency).await;
            println!("| {concurrency} | {rate:.0} |");
        }
    });
}
