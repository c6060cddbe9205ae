//! Support for the integration tests: a fake OpenID provider, the gateway under test, a browser
//! with a cookie jar, and test certificates.

pub mod browser;
pub mod certs;
pub mod gateway;
pub mod process;
pub mod provider;
pub mod raw;
pub mod redis;
pub mod upstream;

use std::sync::Arc;

use oidc_bff::clock::ManualClock;

pub use browser::Browser;
pub use gateway::TestGateway;
pub use provider::{Alg, FakeProvider, LogoutSpec, RefreshFailure, Tamper};
pub use upstream::Upstream;

/// A provider and a gateway sharing one manual clock.
pub async fn setup(extra: &[&str]) -> (FakeProvider, TestGateway) {
    let clock = Arc::new(ManualClock::starting_now());
    let provider = FakeProvider::start(clock).await;
    let gateway = TestGateway::start(&provider, extra).await;
    (provider, gateway)
}
