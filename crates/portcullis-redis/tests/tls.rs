//! TLS and authentication to a real `redis-server` (TLS-only port): the
//! server's certificate is verified against `ca`, credentials come from a
//! file or the environment, mutual TLS when the server requires it, and each
//! failure is refused at connect with its own error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use common::{cfg, RedisServer, ServerTls, TempDir};
use portcullis_contain::StateStore;
use portcullis_redis::{RedisStore, RedisStoreError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::json;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf signed by `ca`, written as `<dir>/<name>.{crt,key}`.
fn leaf(ca: &Ca, dir: &Path, name: &str, usage: ExtendedKeyUsagePurpose) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

struct Setup {
    server: RedisServer,
    dir: TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    client: (PathBuf, PathBuf),
    password: PathBuf,
}

async fn setup(require_client_cert: bool) -> Setup {
    let dir = TempDir::new("tls");
    let root = ca("redis test CA");
    let other = ca("some other CA");
    let ca_path = dir.path().join("ca.pem");
    let other_path = dir.path().join("other-ca.pem");
    std::fs::write(&ca_path, &root.pem).unwrap();
    std::fs::write(&other_path, &other.pem).unwrap();
    let (cert, key) = leaf(
        &root,
        dir.path(),
        "server",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(
        &root,
        dir.path(),
        "client",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-for-tests\n").unwrap();
    let server = RedisServer::start_tls(
        &["--requirepass", "s3cret-for-tests"],
        ServerTls {
            cert,
            key,
            ca: ca_path.clone(),
            require_client_cert,
        },
    )
    .await;
    Setup {
        server,
        dir,
        ca: ca_path,
        other_ca: other_path,
        client,
        password,
    }
}

#[tokio::test]
async fn tls_with_a_password_file_works_and_each_wrong_credential_is_refused() {
    let s = setup(false).await;
    let url = s.server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    let mut good = cfg(&url);
    good.ca = Some(s.ca.clone());
    good.password_file = Some(s.password.clone());
    let store = RedisStore::connect(&good).await.unwrap();
    store.put("q", "k", json!(1), None).await.unwrap();
    assert_eq!(
        store.get("q", "k").await.unwrap().map(|e| e.value),
        Some(json!(1))
    );

    // The same password from the environment.
    std::env::set_var("PORTCULLIS_TEST_REDIS_PASSWORD", "s3cret-for-tests");
    let mut env = cfg(&url);
    env.ca = Some(s.ca.clone());
    env.password_env = Some("PORTCULLIS_TEST_REDIS_PASSWORD".into());
    let other = RedisStore::connect(&env).await.unwrap();
    assert_eq!(other.list("q").await.unwrap().len(), 1);

    // No password, a wrong one: refused as authentication failures.
    let mut none = cfg(&url);
    none.ca = Some(s.ca.clone());
    let e = RedisStore::connect(&none).await.err().expect("no password");
    assert!(matches!(e, RedisStoreError::Auth { .. }), "{e:?}");
    let wrong = s.dir.path().join("wrong");
    std::fs::write(&wrong, "not-it").unwrap();
    let mut bad = cfg(&url);
    bad.ca = Some(s.ca.clone());
    bad.password_file = Some(wrong);
    let e = RedisStore::connect(&bad)
        .await
        .err()
        .expect("wrong password");
    assert!(matches!(e, RedisStoreError::Auth { .. }), "{e:?}");
    assert!(
        !format!("{e} {e:?}").contains("not-it"),
        "the password is never printed"
    );

    // A server certificate from a CA we do not trust: refused at the handshake.
    let mut untrusted = cfg(&url);
    untrusted.ca = Some(s.other_ca.clone());
    untrusted.password_file = Some(s.password.clone());
    let e = RedisStore::connect(&untrusted)
        .await
        .err()
        .expect("untrusted CA");
    assert!(matches!(e, RedisStoreError::Connect { .. }), "{e:?}");

    // Plain text to the TLS port gets nowhere either.
    let mut plain = cfg(&url.replacen("rediss://", "redis://", 1));
    plain.password_file = Some(s.password.clone());
    assert!(RedisStore::connect(&plain).await.is_err());
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let s = setup(true).await;
    let url = s.server.url();
    let mut without = cfg(&url);
    without.ca = Some(s.ca.clone());
    without.password_file = Some(s.password.clone());
    assert!(
        RedisStore::connect(&without).await.is_err(),
        "a server requiring client certificates refuses one without"
    );
    let mut with = without.clone();
    with.cert = Some(s.client.0.clone());
    with.key = Some(s.client.1.clone());
    let store = RedisStore::connect(&with).await.unwrap();
    store.put("q", "k", json!("mtls"), None).await.unwrap();
    assert_eq!(store.list("q").await.unwrap().len(), 1);
}
