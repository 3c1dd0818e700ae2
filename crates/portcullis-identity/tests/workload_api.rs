//! The gateway's identity from the SPIFFE Workload API, end to end: a
//! stand-in SPIRE agent (`spire_stand_in`: the real gRPC protocol on a unix
//! socket, SVIDs from test CAs — no SPIRE agent can be installed here)
//! feeds `WorkloadIdentity`, and real rustls handshakes over loopback show
//! what the listener and the upstream client present and accept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod spire_stand_in;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_identity::ca::{IssuedPem, LocalCa};
use portcullis_identity::spiffe::{fingerprint_sha256, SpiffeId};
use portcullis_identity::tls::{provider, ClientPolicy, DenyList, TlsMode};
use portcullis_identity::workload::{WorkloadCfg, WorkloadError, WorkloadIdentity, WorkloadX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use spire_stand_in::{entry, issue, response, Agent, X509svidResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Generous bound for anything asynchronous (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(15);

fn socket(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "pc-wl-{}-{}-{tag}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn cfg(path: &Path) -> WorkloadCfg {
    WorkloadCfg {
        socket: Some(format!("unix://{}", path.display())),
        trust_domain: Some("example.org".into()),
        first_svid_timeout_ms: 10_000,
        reconnect_min_ms: 50,
        reconnect_max_ms: 200,
        ..WorkloadCfg::default()
    }
}

fn ca(name: &str) -> LocalCa {
    LocalCa::generate(name).unwrap()
}

const GATEWAY: &str = "spiffe://example.org/gateway";

/// Waits until the identity's snapshot satisfies `f`.
async fn until(id: &WorkloadIdentity, f: impl FnMut(&Arc<WorkloadX509>) -> bool) {
    let mut rx = id.watch();
    tokio::time::timeout(WAIT, rx.wait_for(f))
        .await
        .expect("timed out waiting for a Workload API update")
        .unwrap();
}

/// Polls a condition (for state that has no channel, e.g. `connected`).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn policy() -> Arc<ClientPolicy> {
    Arc::new(ClientPolicy {
        trust_domains: vec!["example.org".into()],
        require_spiffe: true,
        deny: Arc::new(DenyList::default()),
    })
}

/// A TLS listener on loopback with `cfg`; each handshake's outcome (the
/// client certificate's fingerprint, or the error) is reported.
async fn listener(
    cfg: Arc<rustls::ServerConfig>,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Result<Option<String>, String>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(s).await {
                    Ok(mut tls) => {
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| fingerprint_sha256(c.as_ref()));
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                        let _ = tx.send(Ok(peer));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// One full handshake (and the server's "ok", so a refused client
/// certificate shows on TLS 1.3 too); the server leaf's fingerprint.
async fn connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let fut = async {
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        Ok(fingerprint_sha256(leaf.as_ref()))
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("handshake hung")
}

async fn outcome(
    rx: &mut mpsc::UnboundedReceiver<Result<Option<String>, String>>,
) -> Result<Option<String>, String> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no server outcome")
        .unwrap()
}

fn roots(cas: &[&LocalCa]) -> RootCertStore {
    let mut r = RootCertStore::empty();
    for c in cas {
        r.add(CertificateDer::from(c.cert_der().to_vec())).unwrap();
    }
    r
}

/// A client that trusts `cas` for the server (by DNS name) and presents `cert`.
fn client(cas: &[&LocalCa], cert: Option<&IssuedPem>) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(cas));
    Arc::new(match cert {
        Some(c) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_svid_and_bundles_are_fetched() {
    let (ca1, partner) = (ca("example.org CA"), ca("partner.org CA"));
    let svid = issue(&ca1, GATEWAY, "gateway.test");
    let other = issue(&ca1, "spiffe://example.org/other", "");
    let path = socket("first");
    let mut resp = response(&svid, &[&ca1]);
    resp.svids.push(entry(&other, &[&ca1], "internal"));
    resp.federated_bundles
        .insert("spiffe://partner.org".into(), partner.cert_der().to_vec());
    let agent = Agent::start(&path, Some(resp));

    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();
    let cur = id.current();
    assert_eq!(
        cur.spiffe_id().to_string(),
        GATEWAY,
        "the default (first) SVID"
    );
    assert_eq!(cur.fingerprint(), svid.info.fingerprint);
    assert_eq!(cur.serial(), svid.info.serial);
    assert_eq!(cur.not_after(), svid.info.not_after);
    assert_eq!(cur.cert_chain()[0].as_ref(), svid.cert_der.as_slice());
    assert_eq!(cur.revision(), 0);
    let tds: Vec<&str> = cur.bundles().trust_domains().collect();
    assert_eq!(tds, ["example.org", "partner.org"]);
    assert_eq!(
        cur.bundles().get("example.org").unwrap().authorities()[0].as_ref(),
        ca1.cert_der()
    );
    assert_eq!(
        cur.bundles().get("partner.org").unwrap().authorities()[0].as_ref(),
        partner.cert_der()
    );
    assert!(id.connected());
    assert_eq!(id.endpoint(), format!("unix://{}", path.display()));
    assert_eq!(agent.calls(), 1);

    // The hint picks another SVID of the same message.
    let mut by_hint = cfg(&path);
    by_hint.hint = Some("internal".into());
    let id2 = WorkloadIdentity::start(&by_hint).await.unwrap();
    assert_eq!(
        id2.current().spiffe_id().to_string(),
        "spiffe://example.org/other"
    );
    assert_eq!(id2.current().hint(), Some("internal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_served_without_restart() {
    let ca1 = ca("example.org CA");
    let first = issue(&ca1, GATEWAY, "gateway.test");
    let path = socket("rotate");
    let agent = Agent::start(&path, Some(response(&first, &[&ca1])));
    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();

    // One listener config for the whole test: the resolver follows the agent.
    let server = id
        .server_config(TlsMode::Required, policy(), Vec::new())
        .unwrap();
    let (addr, mut results) = listener(server).await;
    let agent_cert = issue(&ca1, "spiffe://example.org/agent/a", "");
    let c = client(&[&ca1], Some(&agent_cert));

    let before = connect(addr, c.clone(), "gateway.test").await.unwrap();
    assert_eq!(before, first.info.fingerprint);
    assert_eq!(
        outcome(&mut results).await.unwrap(),
        Some(agent_cert.info.fingerprint.clone())
    );

    let second = issue(&ca1, GATEWAY, "gateway.test");
    agent.push(response(&second, &[&ca1]));
    until(&id, |x| x.revision() == 1).await;
    assert_eq!(id.current().fingerprint(), second.info.fingerprint);
    // The bundle did not change, so its revision (and verifiers) stay.
    assert_eq!(id.current().bundles().revision(), 0);

    let after = connect(addr, c, "gateway.test").await.unwrap();
    assert_eq!(after, second.info.fingerprint);
    assert_ne!(after, before);
    assert!(outcome(&mut results).await.is_ok());
    assert_eq!(agent.calls(), 1, "one stream, no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_update_changes_which_clients_are_accepted() {
    let (ca1, ca2) = (ca("example.org CA 1"), ca("example.org CA 2"));
    let svid = issue(&ca1, GATEWAY, "gateway.test");
    let path = socket("bundle");
    let agent = Agent::start(&path, Some(response(&svid, &[&ca1])));
    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();
    let (addr, mut results) = listener(
        id.server_config(TlsMode::Required, policy(), Vec::new())
            .unwrap(),
    )
    .await;
    let old_client = client(
        &[&ca1],
        Some(&issue(&ca1, "spiffe://example.org/agent/old", "")),
    );
    let new_client = client(
        &[&ca1],
        Some(&issue(&ca2, "spiffe://example.org/agent/new", "")),
    );

    // Before: only CA 1 is trusted.
    connect(addr, old_client.clone(), "gateway.test")
        .await
        .unwrap();
    assert!(outcome(&mut results).await.is_ok());
    assert!(connect(addr, new_client.clone(), "gateway.test")
        .await
        .is_err());
    let refused = outcome(&mut results).await.unwrap_err();
    assert!(refused.to_lowercase().contains("issuer"), "{refused}");

    // The agent adds CA 2 to the bundle: the new client is accepted.
    agent.push(response(&svid, &[&ca1, &ca2]));
    until(&id, |x| x.bundles().revision() == 1).await;
    assert_eq!(
        id.current().fingerprint(),
        svid.info.fingerprint,
        "same SVID"
    );
    connect(addr, new_client.clone(), "gateway.test")
        .await
        .unwrap();
    assert!(outcome(&mut results).await.is_ok());

    // Then drops CA 1: the old client is refused, the new one still works.
    agent.push(response(&svid, &[&ca2]));
    until(&id, |x| x.bundles().revision() == 2).await;
    assert!(connect(addr, old_client, "gateway.test").await.is_err());
    assert!(outcome(&mut results).await.is_err());
    connect(addr, new_client, "gateway.test").await.unwrap();
    assert!(outcome(&mut results).await.is_ok());

    // A client of another trust domain is refused whatever CA signed it.
    let foreign = client(
        &[&ca1],
        Some(&issue(&ca2, "spiffe://partner.org/agent/x", "")),
    );
    assert!(connect(addr, foreign, "gateway.test").await.is_err());
    assert!(outcome(&mut results).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gone_keeps_last_svid_and_reconnects() {
    let ca1 = ca("example.org CA");
    let first = issue(&ca1, GATEWAY, "gateway.test");
    let path = socket("gone");
    let mut agent = Agent::start(&path, Some(response(&first, &[&ca1])));
    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();
    let (addr, mut results) = listener(
        id.server_config(TlsMode::Optional, policy(), Vec::new())
            .unwrap(),
    )
    .await;
    let c = client(&[&ca1], None);

    agent.kill();
    eventually("the loss to be noticed", || !id.connected()).await;
    assert!(id.last_error().is_some());
    // Let a few reconnects fail, then check the last SVID is still served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connect(addr, c.clone(), "gateway.test").await.unwrap(),
        first.info.fingerprint
    );
    assert_eq!(outcome(&mut results).await.unwrap(), None, "no client cert");

    // The agent comes back (restarted) with a new SVID.
    let second = issue(&ca1, GATEWAY, "gateway.test");
    let agent2 = Agent::start(&path, Some(response(&second, &[&ca1])));
    until(&id, |x| x.fingerprint() == second.info.fingerprint).await;
    eventually("the reconnect", || id.connected()).await;
    assert_eq!(
        connect(addr, c, "gateway.test").await.unwrap(),
        second.info.fingerprint
    );
    assert!(outcome(&mut results).await.is_ok());
    assert_eq!(agent2.calls(), 1);
    eventually("the error to clear", || id.last_error().is_none()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_svid_is_not_served() {
    let ca1 = ca("example.org CA");
    let now = portcullis_identity::tls::now_unix();
    let mut req =
        portcullis_identity::ca::IssueRequest::new(Some(SpiffeId::parse(GATEWAY).unwrap()));
    req.dns = vec!["gateway.test".into()];
    req.validity = Some((now - 60, now + 2));
    let short = ca1.issue(&req).unwrap();
    let path = socket("expire");
    let mut agent = Agent::start(&path, Some(response(&short, &[&ca1])));
    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();
    let (addr, mut results) = listener(
        id.server_config(TlsMode::Optional, policy(), Vec::new())
            .unwrap(),
    )
    .await;
    let c = client(&[&ca1], None);
    assert_eq!(
        connect(addr, c.clone(), "gateway.test").await.unwrap(),
        short.info.fingerprint
    );
    assert!(outcome(&mut results).await.is_ok());

    agent.kill();
    let wait =
        u64::try_from(short.info.not_after + 1 - portcullis_identity::tls::now_unix()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
    // No certificate to serve: the handshake fails; nothing falls back.
    assert!(connect(addr, c, "gateway.test").await.is_err());
    let e = outcome(&mut results).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_socket_fails_after_the_timeout() {
    let path = socket("missing");
    let mut c = cfg(&path);
    c.first_svid_timeout_ms = 400;
    let start = Instant::now();
    let e = WorkloadIdentity::start(&c).await.unwrap_err();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(matches!(e, WorkloadError::FirstSvid { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("within 400 ms"), "{msg}");
    assert!(msg.to_lowercase().contains("no such file"), "{msg}");

    // An agent that answers but never issues an identity: same, and says so.
    let agent = Agent::start(&path, None);
    let e = WorkloadIdentity::start(&c).await.unwrap_err().to_string();
    assert!(e.contains("no SVID yet"), "{e}");
    assert!(agent.calls() >= 1);

    // No socket configured at all.
    let none = WorkloadCfg {
        socket: None,
        ..WorkloadCfg::default()
    };
    if std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_none() {
        let e = WorkloadIdentity::start(&none).await.unwrap_err();
        assert!(matches!(e, WorkloadError::NoEndpoint), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_the_current_svid_kept() {
    let (ca1, ca_other) = (ca("example.org CA"), ca("other.org CA"));
    let svid = issue(&ca1, GATEWAY, "gateway.test");
    let path = socket("refuse");

    // At start, an SVID of another trust domain is refused, and the error says why.
    let foreign = issue(&ca_other, "spiffe://other.org/gateway", "");
    let agent = Agent::start(&path, Some(response(&foreign, &[&ca_other])));
    let mut c = cfg(&path);
    c.first_svid_timeout_ms = 400;
    let e = WorkloadIdentity::start(&c).await.unwrap_err().to_string();
    assert!(e.contains("not in trust domain"), "{e}");

    agent.push(response(&svid, &[&ca1]));
    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();
    assert_eq!(id.current().fingerprint(), svid.info.fingerprint);

    // Later: the same refusal keeps the current SVID; a good update applies.
    agent.push(response(&foreign, &[&ca_other]));
    eventually("the refusal", || {
        id.last_error()
            .is_some_and(|e| e.contains("not in trust domain"))
    })
    .await;
    assert_eq!(id.current().fingerprint(), svid.info.fingerprint);
    assert_eq!(id.current().revision(), 0);
    // A key that does not belong to the certificate is refused too.
    let mut mismatched = response(&issue(&ca1, GATEWAY, ""), &[&ca1]);
    mismatched.svids[0].x509_svid_key = spire_stand_in::key_der(&svid);
    agent.push(mismatched);
    eventually("the key refusal", || {
        id.last_error().is_some_and(|e| e.contains("key"))
    })
    .await;
    assert_eq!(id.current().revision(), 0);
    let next = issue(&ca1, GATEWAY, "gateway.test");
    agent.push(response(&next, &[&ca1]));
    until(&id, |x| x.fingerprint() == next.info.fingerprint).await;
    assert_eq!(id.current().revision(), 1);
    assert!(id.last_error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_uses_the_current_svid_and_bundle() {
    let ca1 = ca("example.org CA");
    let first = issue(&ca1, GATEWAY, "");
    let path = socket("upstream");
    let agent = Agent::start(&path, Some(response(&first, &[&ca1])));
    let id = WorkloadIdentity::start(&cfg(&path)).await.unwrap();

    // The upstream: its own SVID (no DNS name), requiring a client cert of CA 1.
    let up = issue(&ca1, "spiffe://example.org/tickets", "");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&[&ca1])),
        provider(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(up.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(up.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let (addr, mut results) = listener(Arc::new(server)).await;

    let expected = SpiffeId::parse("spiffe://example.org/tickets").unwrap();
    let gw = id.client_config(&expected).unwrap();
    assert_eq!(
        connect(addr, gw.clone(), "tickets.internal").await.unwrap(),
        up.info.fingerprint
    );
    assert_eq!(
        outcome(&mut results).await.unwrap(),
        Some(first.info.fingerprint.clone()),
        "the gateway presented its SVID"
    );

    // Rotation: the same client config presents the new SVID.
    let second = issue(&ca1, GATEWAY, "");
    agent.push(response(&second, &[&ca1]));
    until(&id, |x| x.revision() == 1).await;
    connect(addr, gw, "tickets.internal").await.unwrap();
    assert_eq!(
        outcome(&mut results).await.unwrap(),
        Some(second.info.fingerprint.clone())
    );

    // Another SPIFFE ID than expected is refused by the gateway.
    let wrong = id
        .client_config(&SpiffeId::parse("spiffe://example.org/billing").unwrap())
        .unwrap();
    assert!(connect(addr, wrong, "tickets.internal").await.is_err());
    let _ = outcome(&mut results).await;

    // An upstream chained to a CA outside the bundle is refused too.
    let rogue_ca = ca("rogue");
    let rogue = issue(&rogue_ca, "spiffe://example.org/tickets", "");
    let rogue_server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(rogue.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(rogue.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let (raddr, _r) = listener(Arc::new(rogue_server)).await;
    let e = connect(
        raddr,
        id.client_config(&expected).unwrap(),
        "tickets.internal",
    )
    .await
    .unwrap_err();
    assert!(e.to_lowercase().contains("issuer"), "{e}");
}

/// The stand-in refuses a call without the Workload API security header,
/// as SPIRE does (so the crate's client must be sending it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_requires_the_security_header() {
    let ca1 = ca("example.org CA");
    let path = socket("header");
    let _agent = Agent::start(&path, Some(response(&issue(&ca1, GATEWAY, ""), &[&ca1])));
    let p = path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(UnixConnector(p))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let r = grpc
        .server_streaming::<_, X509svidResponse, _>(
            tonic::Request::new(spire_stand_in::X509svidRequest {}),
            http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let Err(status) = r else {
        panic!("a call without the header must fail")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        })
    }
}
