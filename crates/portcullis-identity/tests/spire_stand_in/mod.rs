//! A test stand-in for the SPIRE agent's SPIFFE Workload API.
//!
//! Why: no SPIRE agent can be installed on the build machines (not in
//! Debian, crates.io, PyPI or npm; SPIRE is a Go program), so the tests
//! talk to this instead. It speaks the real protocol the `spiffe` crate
//! speaks to SPIRE: gRPC over HTTP/2 on a unix socket, service
//! `SpiffeWorkloadAPI`, server-streaming `FetchX509SVID`, messages encoded
//! exactly as in the official `workload.proto` (field numbers below), and
//! it refuses a call without the `workload.spiffe.io: true` security
//! header with `InvalidArgument`, as SPIRE does.
//!
//! Scope: `FetchX509SVID` only (every other method answers UNIMPLEMENTED);
//! no attestation (every caller gets the same SVIDs); no CRLs, no JWT. A
//! stream sends the current response at once (or waits until there is
//! one), then every response pushed with [`Agent::push`]. [`Agent::kill`]
//! is an abrupt death: connections are dropped mid-stream and the socket
//! file removed. SVIDs come from test CAs made with `rcgen` through the
//! crate's own `LocalCa`.
//!
//! Shared: `crates/portcullis/tests/spiffe.rs` compiles this same file
//! (`#[path = ...] mod spire_stand_in;`) to run the gateway binary against
//! it, so keep it free of anything only this crate's tests have (its
//! dependencies are dev-dependencies of both crates).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use portcullis_identity::ca::{IssueRequest, IssuedPem, LocalCa};
use portcullis_identity::spiffe::SpiffeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// `X509SVIDRequest` (no fields).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct X509svidRequest {}

/// `X509SVIDResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509svidResponse {
    /// `repeated X509SVID svids = 1;`
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509svid>,
    /// `repeated bytes crl = 2;`
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// `map<string, bytes> federated_bundles = 3;` (trust domain ID → DER CAs)
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct X509svid {
    /// `string spiffe_id = 1;`
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// `bytes x509_svid = 2;` DER certificates, leaf first, concatenated.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// `bytes x509_svid_key = 3;` PKCS#8 DER.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// `bytes bundle = 4;` DER CA certificates of the SVID's trust domain.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    /// `string hint = 5;`
    #[prost(string, tag = "5")]
    pub hint: String,
}

/// Issues a leaf SVID (with a DNS SAN so ordinary TLS clients can check it).
pub fn issue(ca: &LocalCa, id: &str, dns: &str) -> IssuedPem {
    let mut req = IssueRequest::new(Some(SpiffeId::parse(id).unwrap()));
    if !dns.is_empty() {
        req.dns = vec![dns.to_owned()];
    }
    ca.issue(&req).unwrap()
}

/// PKCS#8 DER of an issued key.
pub fn key_der(issued: &IssuedPem) -> Vec<u8> {
    match PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap() {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        other => panic!("not PKCS#8: {other:?}"),
    }
}

/// One `X509SVID` entry: `svid` with `bundle` (CAs concatenated).
pub fn entry(svid: &IssuedPem, bundle: &[&LocalCa], hint: &str) -> X509svid {
    X509svid {
        spiffe_id: svid.info.spiffe_id.as_ref().unwrap().to_string(),
        x509_svid: svid.cert_der.clone(),
        x509_svid_key: key_der(svid),
        bundle: bundle.iter().flat_map(|c| c.cert_der().to_vec()).collect(),
        hint: hint.to_owned(),
    }
}

/// A response with one SVID and its trust domain's bundle.
pub fn response(svid: &IssuedPem, bundle: &[&LocalCa]) -> X509svidResponse {
    X509svidResponse {
        svids: vec![entry(svid, bundle, "")],
        ..Default::default()
    }
}

/// A running stand-in agent on one unix socket.
pub struct Agent {
    path: PathBuf,
    state: Option<watch::Sender<Option<X509svidResponse>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    calls: Arc<Mutex<usize>>,
}

impl Agent {
    /// Listens on `path` and serves `initial` (None: no SVID yet; streams wait).
    pub fn start(path: &Path, initial: Option<X509svidResponse>) -> Agent {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (tx, rx) = watch::channel(initial);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let calls: Arc<Mutex<usize>> = Arc::default();
        let (t, c) = (tasks.clone(), calls.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let rx = rx.clone();
                let calls = c.clone();
                let svc =
                    hyper::service::service_fn(move |req| handle(req, rx.clone(), calls.clone()));
                let conn = tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Agent {
            path: path.to_owned(),
            state: Some(tx),
            tasks,
            calls,
        }
    }

    /// Pushes a new response to every open stream (a rotation or bundle update).
    pub fn push(&self, resp: X509svidResponse) {
        if let Some(tx) = &self.state {
            tx.send_replace(Some(resp));
        }
    }

    /// How many `FetchX509SVID` calls were accepted.
    pub fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }

    /// Dies abruptly: every connection dropped, the socket file removed.
    pub fn kill(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.state = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

type Body = tonic::body::Body;

async fn handle(
    req: http::Request<hyper::body::Incoming>,
    state: watch::Receiver<Option<X509svidResponse>>,
    calls: Arc<Mutex<usize>>,
) -> Result<http::Response<Body>, Infallible> {
    if req.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
        return Ok(tonic::Status::unimplemented("not served by the stand-in agent").into_http());
    }
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
        X509svidResponse,
        X509svidRequest,
    >::default());
    Ok(grpc
        .server_streaming(FetchX509Svid { state, calls }, req)
        .await)
}

type SvidStream = Pin<Box<dyn Stream<Item = Result<X509svidResponse, tonic::Status>> + Send>>;

struct FetchX509Svid {
    state: watch::Receiver<Option<X509svidResponse>>,
    calls: Arc<Mutex<usize>>,
}

impl tonic::server::ServerStreamingService<X509svidRequest> for FetchX509Svid {
    type Response = X509svidResponse;
    type ResponseStream = SvidStream;
    type Future = std::future::Ready<Result<tonic::Response<SvidStream>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<X509svidRequest>) -> Self::Future {
        let header = req
            .metadata()
            .get("workload.spiffe.io")
            .and_then(|v| v.to_str().ok());
        if header != Some("true") {
            return std::future::ready(Err(tonic::Status::invalid_argument(
                "security header missing from request",
            )));
        }
        *self.calls.lock().unwrap() += 1;
        let mut rx = self.state.clone();
        rx.mark_changed();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                let current = rx.borrow_and_update().clone();
                if let Some(resp) = current {
                    return Some((Ok(resp), rx));
                }
            }
        });
        std::future::ready(Ok(tonic::Response::new(Box::pin(stream) as SvidStream)))
    }
}
