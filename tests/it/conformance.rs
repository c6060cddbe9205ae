//! The OpenID Foundation conformance suite's relying-party test plan ("Basic RP", code flow),
//! reproduced against the fake provider: each test names the suite's test id it mirrors.

use std::sync::Arc;

use oidc_bff::clock::ManualClock;
use serde_json::json;

use crate::support::{Alg, FakeProvider, Tamper, TestGateway, setup};

async fn setup_with(alg: Alg) -> (FakeProvider, TestGateway) {
    let provider = FakeProvider::start_with(Arc::new(ManualClock::starting_now()), alg).await;
    let gateway = TestGateway::start(&provider, &[]).await;
    (provider, gateway)
}

async fn assert_login_refused(provider: &FakeProvider, gateway: &TestGateway, tamper: Tamper) {
    provider.tamper(tamper.clone());
    let mut browser = gateway.browser();
    let reply = browser.login("/").await;
    assert_eq!(
        reply.status, 400,
        "{tamper:?} must be refused: {}",
        reply.body
    );
    assert!(!browser.is_auth().await, "{tamper:?} created a session");
}

async fn assert_login_accepted(gateway: &TestGateway) {
    let mut browser = gateway.browser();
    let reply = browser.login("/").await;
    assert_eq!(reply.status, 302, "login refused: {}", reply.body);
    assert!(browser.is_auth().await);
}

#[tokio::test]
async fn rp_response_type_code_with_rs256() {
    let (_provider, gateway) = setup_with(Alg::Rs256).await;
    assert_login_accepted(&gateway).await;
}

#[tokio::test]
async fn rp_id_token_sig_es256() {
    let (_provider, gateway) = setup_with(Alg::Es256).await;
    assert_login_accepted(&gateway).await;
}

#[tokio::test]
async fn rp_id_token_iss_mismatch() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(
        &provider,
        &gateway,
        Tamper::Issuer("https://evil.example".into()),
    )
    .await;
}

#[tokio::test]
async fn rp_id_token_sub_missing() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::NoSub).await;
}

#[tokio::test]
async fn rp_id_token_aud_invalid_and_missing() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::Audience(json!("someone-else"))).await;
    assert_login_refused(&provider, &gateway, Tamper::NoAudience).await;
    // Our client plus an audience we do not trust.
    assert_login_refused(
        &provider,
        &gateway,
        Tamper::Audience(json!(["bff-client", "someone-else"])),
    )
    .await;
}

#[tokio::test]
async fn rp_id_token_iat_missing_and_in_the_future() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::NoIat).await;
    assert_login_refused(&provider, &gateway, Tamper::IssuedInFuture).await;
}

#[tokio::test]
async fn rp_id_token_expired() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::Expired).await;
}

#[tokio::test]
async fn rp_id_token_kid_absent_single_jwks() {
    let (provider, gateway) = setup(&[]).await;
    provider.strip_kids();
    provider.tamper(Tamper::NoKid);
    assert_login_accepted(&gateway).await;
}

#[tokio::test]
async fn rp_id_token_kid_absent_multiple_jwks() {
    // The suite allows either refusing or trying every key; we refuse rather than guess.
    let provider = FakeProvider::start(Arc::new(ManualClock::starting_now())).await;
    provider.add_second_key_without_kids();
    let gateway = TestGateway::start(&provider, &[]).await;
    assert_login_refused(&provider, &gateway, Tamper::NoKid).await;
}

#[tokio::test]
async fn rp_id_token_bad_sig_rs256() {
    let (provider, gateway) = setup_with(Alg::Rs256).await;
    assert_login_refused(&provider, &gateway, Tamper::BadSignature).await;
}

#[tokio::test]
async fn rp_id_token_bad_sig_es256() {
    let (provider, gateway) = setup_with(Alg::Es256).await;
    assert_login_refused(&provider, &gateway, Tamper::BadSignature).await;
}

#[tokio::test]
async fn rp_id_token_bad_sig_hs256_keyed_with_the_public_key() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::HmacWithPublicKey).await;
}

#[tokio::test]
async fn rp_id_token_sig_none() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::AlgNone).await;
}

#[tokio::test]
async fn rp_nonce_invalid() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::Nonce("replayed".into())).await;
}

#[tokio::test]
async fn rp_id_token_azp_of_another_client_and_wrong_at_hash() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_refused(&provider, &gateway, Tamper::Azp("other-client".into())).await;
    assert_login_refused(
        &provider,
        &gateway,
        Tamper::AtHash("AAAAAAAAAAAAAAAAAAAAAA".into()),
    )
    .await;
}

#[tokio::test]
async fn rp_key_rotation_op_sign_key_between_logins() {
    let (provider, gateway) = setup(&[]).await;
    assert_login_accepted(&gateway).await;
    provider.rotate_signing_key(Alg::Rs256);
    assert_login_accepted(&gateway).await;
}

#[tokio::test]
async fn rp_key_rotation_op_sign_key_native_before_first_login() {
    let (provider, gateway) = setup(&[]).await;
    // Rotated after the gateway read the JWKS, before it saw any token: one refetch, accepted.
    provider.rotate_signing_key(Alg::Es256);
    assert_login_accepted(&gateway).await;
}

#[tokio::test]
async fn a_kid_the_provider_never_published_is_refused() {
    let (provider, gateway) = setup(&[]).await;
    provider.sign_with_unpublished_key(Alg::Rs256);
    let mut browser = gateway.browser();
    assert_eq!(browser.login("/").await.status, 400);
}

#[tokio::test]
async fn unusable_keys_in_the_jwks_are_ignored() {
    let clock = Arc::new(ManualClock::starting_now());
    let provider = FakeProvider::start(clock).await;
    provider.add_unusable_jwks();
    let gateway = TestGateway::start(&provider, &[]).await;
    assert_login_accepted(&gateway).await;
}
