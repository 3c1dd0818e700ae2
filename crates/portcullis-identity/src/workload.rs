//! The gateway's own identity from the SPIFFE Workload API (a SPIRE agent's
//! socket) instead of files: its X.509-SVID (certificate chain and private
//! key) and the X.509 trust bundles of every trust domain it may trust,
//! kept live as the agent rotates them, with no restart.
//!
//! # How it works
//!
//! [`WorkloadIdentity::start`] connects to the agent (`workload.socket`, else
//! `$SPIFFE_ENDPOINT_SOCKET`; `unix:` sockets only, since the agent hands
//! over a private key), opens the `FetchX509SVID` stream and waits up to
//! `first_svid_timeout_ms` for a usable SVID. Failing that it returns
//! [`WorkloadError::FirstSvid`], naming the socket and the last cause: the
//! gateway must then refuse to start rather than run without TLS.
//!
//! After that one task (the supervisor) reads the stream. Every message is
//! checked — the SVID picked (the agent's default, or `hint`), its SPIFFE ID
//! a valid leaf SVID in `trust_domain` if set, not expired, the key matching
//! the certificate, a bundle for its own trust domain — and, when anything
//! changed, published as a new [`WorkloadX509`] on a `tokio::sync::watch`
//! channel ([`WorkloadIdentity::watch`]). A message that fails a check is
//! logged and ignored: the previous SVID stays in force.
//!
//! The rustls pieces read that channel on every handshake, so a rotation
//! applies to the next handshake without rebuilding any config:
//! - [`WorkloadIdentity::server_cert_resolver`]: `ResolvesServerCert` that
//!   always serves the current SVID (client-facing and admin listeners);
//! - [`WorkloadIdentity::client_cert_verifier`]: the listener's client
//!   verifier — the same checks as the file-based one in [`crate::tls`]
//!   (webpki chain, expiry, CRLs, then SPIFFE ID, trust-domain allow list and
//!   deny list), with the roots taken from the current bundle of the client
//!   certificate's own trust domain (a certificate only chains to the bundle
//!   of the trust domain it claims). The per-domain verifiers are rebuilt
//!   once per bundle change and cached;
//! - [`WorkloadIdentity::client_cert_resolver`] and
//!   [`WorkloadIdentity::upstream_verifier`]: upstream mTLS with the current
//!   SVID as the client certificate and the current bundle of the expected
//!   SPIFFE ID's trust domain as roots; [`WorkloadIdentity::client_config`]
//!   and [`WorkloadIdentity::server_config`] put them together.
//!
//! # When the agent goes away
//!
//! The supervisor logs it, keeps serving the last SVID and bundles, and
//! reconnects with exponential backoff (`reconnect_min_ms` doubling up to
//! `reconnect_max_ms`, ±20 % jitter). Once the last SVID has expired the
//! resolvers return nothing, so handshakes fail (logged once per SVID):
//! there is never a fallback to plain connections or to no certificate.
//! A stream that stalls without closing is not detected (the agent's socket
//! closes when it dies or restarts).
//!
//! # Limits
//!
//! - Client certificates verified through the Workload API must carry a
//!   SPIFFE ID: its trust domain chooses the bundle.
//! - The verifier sends no CA names in its certificate request (the bundle
//!   rotates); clients send the certificate they have.
//! - The configs built here turn TLS session resumption off: a resumed
//!   session is not checked against the current bundle and keeps the SVID
//!   of its first handshake. Whoever assembles their own config from the
//!   resolvers and verifiers should do the same.
//! - CRLs sent by the agent are ignored (the `spiffe` crate drops them);
//!   static CRL files can be passed to the verifier.
//!
//! The `spiffe` crate (pinned) is used only here, so a new release touches
//! one file. Tests (`tests/workload_api.rs`) run against a stand-in for the
//! SPIRE agent that speaks the real protocol, since no SPIRE agent can be
//! installed on the build machines.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ca::format_unix;
use crate::spiffe::{self as ids, SpiffeId};
use crate::tls::{self, now_unix, ClientPolicy, TlsError, TlsMode};

/// The environment variable SPIFFE defines for the Workload API socket.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Longest a connect or stream open may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_first_svid_timeout_ms() -> u64 {
    15_000
}

fn default_reconnect_min_ms() -> u64 {
    200
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

/// Where and how to take the gateway's identity from the Workload API;
/// meant to be embedded in the gateway config (e.g. as `[workload]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCfg {
    /// The agent's socket, `unix:///run/spire/agent.sock` (a bare absolute
    /// path is taken as `unix://PATH`); unset: `$SPIFFE_ENDPOINT_SOCKET`.
    #[serde(default)]
    pub socket: Option<String>,
    /// The trust domain the gateway's own SVID must belong to; an SVID from
    /// another one is refused (unset: whatever the agent issues).
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Picks the SVID whose agent hint equals this when several are issued
    /// (unset: the first, the Workload API's default SVID).
    #[serde(default)]
    pub hint: Option<String>,
    /// How long start-up waits for the first usable SVID before failing.
    #[serde(default = "default_first_svid_timeout_ms")]
    pub first_svid_timeout_ms: u64,
    /// First reconnect delay after the agent goes away (doubles each try).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

impl Default for WorkloadCfg {
    fn default() -> Self {
        WorkloadCfg {
            socket: None,
            trust_domain: None,
            hint: None,
            first_svid_timeout_ms: default_first_svid_timeout_ms(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }
}

impl WorkloadCfg {
    /// Checks the settings, naming the key at fault (the socket is checked
    /// by [`WorkloadCfg::endpoint`], which may read the environment).
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |key, why: &str| {
            Err(WorkloadError::Config {
                key,
                why: why.to_owned(),
            })
        };
        if let Some(td) = &self.trust_domain {
            if let Err(e) = ids::check_trust_domain(td) {
                return bad("trust_domain", &e.to_string());
            }
        }
        if self.hint.as_deref() == Some("") {
            return bad(
                "hint",
                "must not be empty (leave it out for the default SVID)",
            );
        }
        if self.first_svid_timeout_ms == 0 || self.first_svid_timeout_ms > 600_000 {
            return bad("first_svid_timeout_ms", "must be 1..=600000");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > 600_000 {
            return bad("reconnect_min_ms", "must be 1..=600000");
        }
        if self.reconnect_max_ms < self.reconnect_min_ms || self.reconnect_max_ms > 600_000 {
            return bad(
                "reconnect_max_ms",
                "must be at least reconnect_min_ms and at most 600000",
            );
        }
        Ok(())
    }

    /// The Workload API address to use: `socket`, else
    /// `$SPIFFE_ENDPOINT_SOCKET`, normalised to `unix:///…`.
    pub fn endpoint(&self) -> Result<String, WorkloadError> {
        let raw = match &self.socket {
            Some(s) => s.clone(),
            None => match std::env::var(ENDPOINT_ENV) {
                Ok(s) => s,
                Err(std::env::VarError::NotPresent) => return Err(WorkloadError::NoEndpoint),
                Err(std::env::VarError::NotUnicode(s)) => {
                    return Err(WorkloadError::BadEndpoint {
                        endpoint: s.to_string_lossy().into_owned(),
                        why: format!("${ENDPOINT_ENV} is not valid UTF-8"),
                    })
                }
            },
        };
        parse_endpoint(&raw).map(|(text, _)| text)
    }
}

/// Accepts `unix:///path`, `unix:/path` or `/path`; refuses `tcp:` (the
/// agent would hand over the private key in plaintext).
fn parse_endpoint(raw: &str) -> Result<(String, ::spiffe::transport::Endpoint), WorkloadError> {
    let raw = raw.trim();
    let text = if raw.starts_with('/') {
        format!("unix://{raw}")
    } else {
        raw.to_owned()
    };
    let bad = |why: String| WorkloadError::BadEndpoint {
        endpoint: raw.to_owned(),
        why,
    };
    if text.is_empty() {
        return Err(bad("empty".into()));
    }
    let ep = ::spiffe::transport::Endpoint::parse(&text).map_err(|e| bad(e.to_string()))?;
    match &ep {
        ::spiffe::transport::Endpoint::Unix(path) => {
            Ok((format!("unix://{}", path.display()), ep.clone()))
        }
        _ => Err(bad(
            "only unix: sockets are supported (a tcp: Workload API sends the private key in plaintext)"
                .into(),
        )),
    }
}

/// Why the Workload API identity could not be set up; names the setting or
/// the socket.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// Neither `socket` nor `$SPIFFE_ENDPOINT_SOCKET` says where the agent is.
    #[error("SPIFFE Workload API: no socket configured (set workload.socket or $SPIFFE_ENDPOINT_SOCKET)")]
    NoEndpoint,
    /// The socket address is not usable.
    #[error("SPIFFE Workload API socket {endpoint:?}: {why}")]
    BadEndpoint {
        /// The address as given.
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
    /// A setting is out of range.
    #[error("workload.{key}: {why}")]
    Config {
        /// The key, e.g. `trust_domain`.
        key: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// No usable SVID arrived in time at start-up.
    #[error("no X.509-SVID from the SPIFFE Workload API at {endpoint} within {waited_ms} ms: {last_error}")]
    FirstSvid {
        /// The socket, `unix:///…`.
        endpoint: String,
        /// How long start-up waited.
        waited_ms: u64,
        /// The last failure seen (connect error, refused SVID, …).
        last_error: String,
    },
}

/// One trust domain's X.509 authorities, as DER and as a rustls root store.
#[derive(Debug)]
pub struct TrustBundle {
    authorities: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl TrustBundle {
    /// The CA certificates of the bundle (DER), e.g. to write out or compare.
    pub fn authorities(&self) -> &[CertificateDer<'static>] {
        &self.authorities
    }

    /// The bundle as trust anchors for rustls/webpki.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

/// Every trust domain's bundle at one moment; `revision` changes with them.
#[derive(Debug)]
pub struct TrustBundles {
    revision: u64,
    domains: BTreeMap<String, TrustBundle>,
}

impl TrustBundles {
    /// Counts bundle changes, so derived verifiers know when to rebuild.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The bundle of one trust domain (`example.org`), if the agent sent one.
    pub fn get(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.domains.get(trust_domain)
    }

    /// The trust domains that have a bundle, sorted.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    fn same_authorities(&self, other: &BTreeMap<String, Vec<CertificateDer<'static>>>) -> bool {
        self.domains.len() == other.len()
            && self
                .domains
                .iter()
                .zip(other.iter())
                .all(|((a, ab), (b, bb))| a == b && ab.authorities == *bb)
    }
}

/// The gateway's current X.509-SVID and trust bundles, as one consistent
/// snapshot from the Workload API.
pub struct WorkloadX509 {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    certified: Arc<CertifiedKey>,
    fingerprint: String,
    serial: String,
    not_after: i64,
    hint: Option<String>,
    bundles: Arc<TrustBundles>,
    revision: u64,
}

impl fmt::Debug for WorkloadX509 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadX509")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("fingerprint", &self.fingerprint)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("hint", &self.hint)
            .field(
                "trust_domains",
                &self.bundles.trust_domains().collect::<Vec<_>>(),
            )
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl WorkloadX509 {
    /// The gateway's SPIFFE ID, for logs and for upstream authorization.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The certificate chain, leaf first, as the agent sent it.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key (PKCS#8), for clients that take a fixed cert and key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Chain and key ready for rustls.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// SHA-256 of the leaf (hex), the same form as deny lists and logs use.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The leaf's serial number (hex).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the leaf expires (unix seconds): the last moment it is served.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether the leaf has expired at `now` (unix seconds).
    pub fn expired_at(&self, now: i64) -> bool {
        now > self.not_after
    }

    /// The agent's hint for this SVID, if it gave one.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The trust bundles received with this SVID.
    pub fn bundles(&self) -> &Arc<TrustBundles> {
        &self.bundles
    }

    /// Counts accepted changes (SVID or bundles); 0 is the first SVID.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// Which SVID of a Workload API message is the gateway's, and what it must be.
#[derive(Debug, Clone)]
struct Selection {
    trust_domain: Option<String>,
    hint: Option<String>,
}

/// Checks one Workload API message and turns it into a snapshot; `None`
/// when nothing changed since `prev`. `Err` says why it was refused.
fn build_snapshot(
    ctx: &::spiffe::X509Context,
    sel: &Selection,
    prev: Option<&WorkloadX509>,
    now: i64,
    provider: &CryptoProvider,
) -> Result<Option<WorkloadX509>, String> {
    let svid = match &sel.hint {
        Some(h) => ctx
            .svids()
            .iter()
            .find(|s| s.hint() == Some(h.as_str()))
            .ok_or_else(|| format!("no SVID with hint {h:?} among {}", ctx.svids().len()))?,
        None => ctx.default_svid().ok_or("no SVID in the message")?,
    };
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let leaf = chain.first().ok_or("empty certificate chain")?;
    let id = SpiffeId::from_leaf_cert_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    if id.to_string() != svid.spiffe_id().to_string() {
        return Err(format!(
            "SVID entry names {} but its certificate holds {id}",
            svid.spiffe_id()
        ));
    }
    if let Some(td) = &sel.trust_domain {
        if id.trust_domain() != td {
            return Err(format!("SVID {id} is not in trust domain {td:?}"));
        }
    }
    let (_, not_after) = ids::validity(leaf.as_ref()).map_err(|e| e.to_string())?;
    if now > not_after {
        return Err(format!("SVID {id} expired at {}", format_unix(not_after)));
    }
    let key = PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec());

    let mut authorities: BTreeMap<String, Vec<CertificateDer<'static>>> = BTreeMap::new();
    for (td, bundle) in ctx.bundle_set().iter() {
        let certs: Vec<CertificateDer<'static>> = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        if !certs.is_empty() {
            authorities.insert(td.to_string(), certs);
        }
    }
    if !authorities.contains_key(id.trust_domain()) {
        return Err(format!(
            "no trust bundle for the SVID's own trust domain {:?}",
            id.trust_domain()
        ));
    }

    let bundles = match prev {
        Some(p) if p.bundles.same_authorities(&authorities) => p.bundles.clone(),
        _ => Arc::new(bundles_from(
            authorities,
            prev.map_or(0, |p| p.bundles.revision + 1),
        )),
    };
    if let Some(p) = prev {
        if p.chain == chain
            && p.key.secret_pkcs8_der() == key.secret_pkcs8_der()
            && Arc::ptr_eq(&p.bundles, &bundles)
        {
            return Ok(None);
        }
    }
    let certified = CertifiedKey::from_der(
        chain.clone(),
        PrivateKeyDer::Pkcs8(key.clone_key()),
        provider,
    )
    .map_err(|e| format!("SVID key unusable: {e}"))?;
    Ok(Some(WorkloadX509 {
        fingerprint: ids::fingerprint_sha256(leaf.as_ref()),
        serial: ids::serial_hex(leaf.as_ref()).map_err(|e| e.to_string())?,
        spiffe_id: id,
        chain,
        key,
        certified: Arc::new(certified),
        not_after,
        hint: svid.hint().map(str::to_owned),
        bundles,
        revision: prev.map_or(0, |p| p.revision + 1),
    }))
}

fn bundles_from(
    authorities: BTreeMap<String, Vec<CertificateDer<'static>>>,
    revision: u64,
) -> TrustBundles {
    let mut domains = BTreeMap::new();
    for (td, certs) in authorities {
        let mut roots = RootCertStore::empty();
        let mut kept = Vec::with_capacity(certs.len());
        for c in certs {
            match roots.add(c.clone()) {
                Ok(()) => kept.push(c),
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "Workload API bundle: authority skipped")
                }
            }
        }
        if !roots.is_empty() {
            domains.insert(
                td,
                TrustBundle {
                    authorities: kept,
                    roots: Arc::new(roots),
                },
            );
        }
    }
    TrustBundles { revision, domains }
}

/// An error and its causes on one line, without repeating a cause that is
/// already part of the text.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

type ContextStream =
    Pin<Box<dyn Stream<Item = Result<::spiffe::X509Context, ::spiffe::WorkloadApiError>> + Send>>;

/// One open `FetchX509SVID` stream; the client is kept so its channel lives
/// as long as the stream.
struct Conn {
    _client: ::spiffe::WorkloadApiClient,
    stream: ContextStream,
}

impl Conn {
    async fn open(endpoint: &::spiffe::transport::Endpoint) -> Result<Conn, String> {
        let open = async {
            let client = ::spiffe::WorkloadApiClient::connect(endpoint.clone())
                .await
                .map_err(|e| error_chain(&e))?;
            let stream = client
                .stream_x509_contexts()
                .await
                .map_err(|e| error_chain(&e))?;
            Ok(Conn {
                _client: client,
                stream: Box::pin(stream),
            })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
        }
    }
}

/// Exponential reconnect delays with ±20 % jitter.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let min = Duration::from_millis(min_ms);
        Backoff {
            min,
            max: Duration::from_millis(max_ms),
            next: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// State shared by the handle and the supervisor, for health reporting.
#[derive(Debug)]
struct Shared {
    endpoint: String,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// A live, rotating view of the gateway's identity from the Workload API,
/// and the rustls pieces built on it. Cheap to clone; the background task
/// ends when the last handle, resolver and verifier are gone.
#[derive(Clone)]
pub struct WorkloadIdentity {
    rx: watch::Receiver<Arc<WorkloadX509>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("endpoint", &self.shared.endpoint)
            .field("current", &*self.rx.borrow())
            .finish()
    }
}

impl WorkloadIdentity {
    /// Connects to the agent, waits for the first usable SVID (at most
    /// `first_svid_timeout_ms`) and starts following rotations. Must run
    /// inside a tokio runtime.
    pub async fn start(cfg: &WorkloadCfg) -> Result<WorkloadIdentity, WorkloadError> {
        cfg.validate()?;
        let raw = cfg.endpoint()?;
        let (endpoint_text, endpoint) = parse_endpoint(&raw)?;
        let sel = Selection {
            trust_domain: cfg.trust_domain.clone(),
            hint: cfg.hint.clone(),
        };
        let provider = tls::provider();
        let deadline = Instant::now() + Duration::from_millis(cfg.first_svid_timeout_ms);
        let mut backoff = Backoff::new(cfg.reconnect_min_ms, cfg.reconnect_max_ms);
        let mut last_error = String::from("no answer from the agent");
        let timed_out = |last_error: String| WorkloadError::FirstSvid {
            endpoint: endpoint_text.clone(),
            waited_ms: cfg.first_svid_timeout_ms,
            last_error,
        };
        let (conn, first) = loop {
            let attempt = first_contact(&endpoint, &sel, &provider, &mut last_error);
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Some(found)) => break found,
                Ok(None) => {}
                Err(_) => return Err(timed_out(last_error)),
            }
            tracing::debug!(endpoint = %endpoint_text, error = %last_error, "SPIFFE Workload API not ready yet; retrying");
            let pause = tokio::time::sleep(backoff.next_delay());
            if tokio::time::timeout_at(deadline, pause).await.is_err() {
                return Err(timed_out(last_error));
            }
        };
        tracing::info!(
            endpoint = %endpoint_text,
            spiffe_id = %first.spiffe_id,
            fingerprint = %first.fingerprint,
            expires = %format_unix(first.not_after),
            trust_domains = ?first.bundles.trust_domains().collect::<Vec<_>>(),
            "X.509-SVID from the SPIFFE Workload API"
        );
        let (tx, rx) = watch::channel(Arc::new(first));
        let shared = Arc::new(Shared {
            endpoint: endpoint_text,
            connected: AtomicBool::new(true),
            last_error: Mutex::new(None),
        });
        let sup = Supervisor {
            endpoint,
            sel,
            provider,
            tx,
            shared: shared.clone(),
            backoff: Backoff::new(cfg.reconnect_min_ms, cfg.reconnect_max_ms),
        };
        tokio::spawn(sup.run(conn));
        Ok(WorkloadIdentity { rx, shared })
    }

    /// The current SVID and bundles.
    pub fn current(&self) -> Arc<WorkloadX509> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every accepted change (rotation or bundle
    /// update), e.g. to log, export or rebuild something else.
    pub fn watch(&self) -> watch::Receiver<Arc<WorkloadX509>> {
        self.rx.clone()
    }

    /// The socket in use, `unix:///…`.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// Whether the stream from the agent is open right now (for readiness).
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The last failure (lost stream, refused update), cleared by a good update.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves the current SVID on every handshake (listeners).
    pub fn server_cert_resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(SvidResolver::new(self.rx.clone()))
    }

    /// Presents the current SVID as the client certificate (upstream mTLS).
    pub fn client_cert_resolver(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::new(SvidResolver::new(self.rx.clone()))
    }

    /// The listener's client-certificate verifier over the current bundles:
    /// webpki (chain to the bundle of the certificate's trust domain,
    /// expiry, `crls`) plus `policy` (trust domains, deny list), exactly as
    /// [`tls::client_verifier`] does with files. `mode` must not be `off`.
    pub fn client_cert_verifier(
        &self,
        mode: TlsMode,
        policy: Arc<ClientPolicy>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        if mode == TlsMode::Off {
            return Err(TlsError::Config(
                "a Workload API identity needs TLS (mode optional or required)".into(),
            ));
        }
        let v = WorkloadClientVerifier {
            rx: self.rx.clone(),
            mode,
            policy,
            crls,
            provider: tls::provider(),
            cache: RwLock::new(None),
        };
        // Build once now so a bad CRL fails here, not at the first handshake.
        v.domain_verifiers()?;
        Ok(Arc::new(v))
    }

    /// Verifies an upstream by chain to the current bundle of `expected`'s
    /// trust domain and by that exact SPIFFE ID (no host-name check).
    pub fn upstream_verifier(&self, expected: SpiffeId) -> Arc<dyn ServerCertVerifier> {
        Arc::new(WorkloadServerVerifier {
            rx: self.rx.clone(),
            expected,
            provider: tls::provider(),
        })
    }

    /// A listener config (client-facing or admin) serving the current SVID
    /// and verifying client certificates against the current bundles.
    pub fn server_config(
        &self,
        mode: TlsMode,
        policy: Arc<ClientPolicy>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = self.client_cert_verifier(mode, policy, crls)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.server_cert_resolver());
        // No resumption: a resumed session would skip the current bundle
        // (a dropped CA would still admit its clients) and keep showing the
        // SVID of the original handshake.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// An upstream client config: the current SVID as client certificate,
    /// the upstream checked against the current bundle and `expected`.
    pub fn client_config(
        &self,
        expected: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.upstream_verifier(expected.clone()))
            .with_client_cert_resolver(self.client_cert_resolver());
        // No resumption, for the same reason as the listener's.
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Opens a stream and reads until the first usable SVID; `None` (with
/// `last_error` set) when the stream could not be opened or ended.
async fn first_contact(
    endpoint: &::spiffe::transport::Endpoint,
    sel: &Selection,
    provider: &CryptoProvider,
    last_error: &mut String,
) -> Option<(Conn, WorkloadX509)> {
    let mut conn = match Conn::open(endpoint).await {
        Ok(c) => c,
        Err(e) => {
            *last_error = e;
            return None;
        }
    };
    *last_error = "connected, but the agent has sent no SVID yet".into();
    loop {
        match conn.stream.next().await {
            Some(Ok(ctx)) => match build_snapshot(&ctx, sel, None, now_unix(), provider) {
                Ok(Some(x)) => return Some((conn, x)),
                Ok(None) => {}
                Err(why) => {
                    tracing::warn!(error = %why, "SPIFFE Workload API: SVID refused; waiting for another");
                    *last_error = format!("SVID refused: {why}");
                }
            },
            Some(Err(e)) => {
                *last_error = error_chain(&e);
                return None;
            }
            None => {
                *last_error = "the agent closed the stream".into();
                return None;
            }
        }
    }
}

/// The background task: applies updates, reconnects with backoff, and
/// stops when nobody reads the identity any more.
struct Supervisor {
    endpoint: ::spiffe::transport::Endpoint,
    sel: Selection,
    provider: Arc<CryptoProvider>,
    tx: watch::Sender<Arc<WorkloadX509>>,
    shared: Arc<Shared>,
    backoff: Backoff,
}

impl Supervisor {
    async fn run(mut self, first: Conn) {
        let mut conn = Some(first);
        let mut expiry_logged_for = None;
        loop {
            if let Some(c) = conn.take() {
                let Some(why) = self.follow(c).await else {
                    return;
                };
                self.shared.connected.store(false, Ordering::Relaxed);
                let cur = self.tx.borrow().clone();
                tracing::warn!(
                    endpoint = %self.shared.endpoint,
                    error = %why,
                    spiffe_id = %cur.spiffe_id,
                    expires = %format_unix(cur.not_after),
                    "SPIFFE Workload API stream lost; serving the last SVID until it expires, reconnecting"
                );
                self.shared.set_error(Some(why));
            }
            let delay = self.backoff.next_delay();
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let cur = self.tx.borrow().clone();
            if cur.expired_at(now_unix()) && expiry_logged_for != Some(cur.revision) {
                expiry_logged_for = Some(cur.revision);
                tracing::error!(
                    endpoint = %self.shared.endpoint,
                    spiffe_id = %cur.spiffe_id,
                    "the gateway's SVID expired while the SPIFFE Workload API is unreachable: TLS handshakes fail until it is back"
                );
            }
            let opened = tokio::select! {
                _ = self.tx.closed() => return,
                r = Conn::open(&self.endpoint) => r,
            };
            match opened {
                Ok(c) => {
                    tracing::info!(endpoint = %self.shared.endpoint, "SPIFFE Workload API reconnected");
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.shared.endpoint, error = %e, "SPIFFE Workload API: reconnect failed");
                    self.shared.set_error(Some(e));
                }
            }
        }
    }

    /// Reads one stream until it fails (`Some(why)`) or nobody listens any
    /// more (`None`).
    async fn follow(&mut self, mut conn: Conn) -> Option<String> {
        self.shared.connected.store(true, Ordering::Relaxed);
        loop {
            let item = tokio::select! {
                _ = self.tx.closed() => return None,
                item = conn.stream.next() => item,
            };
            match item {
                Some(Ok(ctx)) => {
                    self.backoff.reset();
                    self.apply(&ctx);
                }
                Some(Err(e)) => return Some(error_chain(&e)),
                None => return Some("the agent closed the stream".into()),
            }
        }
    }

    fn apply(&self, ctx: &::spiffe::X509Context) {
        let cur = self.tx.borrow().clone();
        match build_snapshot(ctx, &self.sel, Some(&cur), now_unix(), &self.provider) {
            Ok(Some(next)) => {
                let svid_changed = next.chain != cur.chain;
                let bundles_changed = !Arc::ptr_eq(&next.bundles, &cur.bundles);
                tracing::info!(
                    spiffe_id = %next.spiffe_id,
                    fingerprint = %next.fingerprint,
                    expires = %format_unix(next.not_after),
                    svid_changed,
                    bundles_changed,
                    trust_domains = ?next.bundles.trust_domains().collect::<Vec<_>>(),
                    revision = next.revision,
                    "SPIFFE Workload API update applied"
                );
                // The error first: whoever sees the new SVID sees no stale
                // refusal next to it.
                self.shared.set_error(None);
                self.tx.send_replace(Arc::new(next));
            }
            Ok(None) => {
                tracing::debug!("SPIFFE Workload API update: nothing changed");
                self.shared.set_error(None);
            }
            Err(why) => {
                tracing::warn!(error = %why, spiffe_id = %cur.spiffe_id, "SPIFFE Workload API update refused; keeping the current SVID");
                self.shared
                    .set_error(Some(format!("update refused: {why}")));
            }
        }
    }
}

/// Serves the current SVID as server or client certificate; nothing once
/// it has expired (the handshake then fails: no unauthenticated fallback).
struct SvidResolver {
    rx: watch::Receiver<Arc<WorkloadX509>>,
    /// Revision + 1 of the last expired SVID logged (0: none).
    warned: AtomicU64,
}

impl SvidResolver {
    fn new(rx: watch::Receiver<Arc<WorkloadX509>>) -> SvidResolver {
        SvidResolver {
            rx,
            warned: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let cur = self.rx.borrow().clone();
        if cur.expired_at(now_unix()) {
            if self.warned.swap(cur.revision + 1, Ordering::Relaxed) != cur.revision + 1 {
                tracing::error!(spiffe_id = %cur.spiffe_id, expired = %format_unix(cur.not_after), "the gateway's SVID has expired and no new one came from the Workload API: refusing TLS handshakes");
            }
            return None;
        }
        Some(cur.certified.clone())
    }
}

impl fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

type DomainVerifiers = BTreeMap<String, Arc<dyn ClientCertVerifier>>;

/// The client-certificate verifier over the live bundles: one file-style
/// verifier per trust domain, rebuilt when the bundles change.
struct WorkloadClientVerifier {
    rx: watch::Receiver<Arc<WorkloadX509>>,
    mode: TlsMode,
    policy: Arc<ClientPolicy>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: Arc<CryptoProvider>,
    cache: RwLock<Option<(u64, Arc<DomainVerifiers>)>>,
}

impl fmt::Debug for WorkloadClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadClientVerifier")
            .field("mode", &self.mode)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl WorkloadClientVerifier {
    /// The verifiers for the current bundles, built once per bundle revision.
    fn domain_verifiers(&self) -> Result<Arc<DomainVerifiers>, TlsError> {
        let bundles = self.rx.borrow().bundles.clone();
        if let Some((rev, v)) = &*self.cache.read().unwrap_or_else(|p| p.into_inner()) {
            if *rev == bundles.revision {
                return Ok(v.clone());
            }
        }
        let mut built = DomainVerifiers::new();
        for (td, b) in &bundles.domains {
            let v = tls::client_verifier_from_roots(
                b.roots.clone(),
                self.crls.clone(),
                self.mode,
                self.policy.clone(),
            )?;
            built.insert(td.clone(), v);
        }
        let built = Arc::new(built);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some((rev, newer)) if *rev > bundles.revision => return Ok(newer.clone()),
            _ => *cache = Some((bundles.revision, built.clone())),
        }
        tracing::debug!(
            revision = bundles.revision,
            "client verifier rebuilt for new trust bundles"
        );
        Ok(built)
    }
}

impl ClientCertVerifier for WorkloadClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == TlsMode::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundles rotate; a borrowed list cannot follow them. Clients
        // send the certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = ids::fingerprint_sha256(end_entity.as_ref());
        let id = match SpiffeId::from_cert_der(end_entity.as_ref()) {
            Ok(Some(id)) => id,
            Ok(None) => {
                tracing::warn!(fingerprint = %fingerprint, reason = "certificate carries no SPIFFE ID (Workload API trust is per trust domain)", "client certificate rejected");
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
            Err(e) => {
                tracing::warn!(fingerprint = %fingerprint, reason = %e, "client certificate rejected: unreadable");
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadEncoding,
                ));
            }
        };
        let verifiers = self.domain_verifiers().map_err(|e| {
            tracing::error!(error = %e, "client verifier could not be rebuilt for new trust bundles");
            rustls::Error::General(e.to_string())
        })?;
        let Some(v) = verifiers.get(id.trust_domain()) else {
            tracing::warn!(fingerprint = %fingerprint, spiffe_id = %id, reason = "no trust bundle for its trust domain", "client certificate rejected");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        v.verify_client_cert(end_entity, intermediates, now)
    }

    signatures_by_provider!();
}

/// Verifies an upstream against the live bundle of the expected ID's trust
/// domain, and the exact SPIFFE ID.
struct WorkloadServerVerifier {
    rx: watch::Receiver<Arc<WorkloadX509>>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for WorkloadServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadServerVerifier")
            .field("expected", &self.expected.to_string())
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for WorkloadServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundles = self.rx.borrow().bundles.clone();
        let Some(bundle) = bundles.get(self.expected.trust_domain()) else {
            tracing::warn!(expected = %self.expected, "upstream refused: no trust bundle for its trust domain from the Workload API");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        tls::verify_upstream_cert(
            &bundle.roots,
            &self.expected,
            &self.provider,
            end_entity,
            intermediates,
            now,
        )
    }

    signatures_by_provider!();
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let ok = |s: &str| parse_endpoint(s).unwrap().0;
        assert_eq!(
            ok("unix:///run/spire/agent.sock"),
            "unix:///run/spire/agent.sock"
        );
        assert_eq!(
            ok("unix:/run/spire/agent.sock"),
            "unix:///run/spire/agent.sock"
        );
        assert_eq!(ok("/run/spire/agent.sock"), "unix:///run/spire/agent.sock");
        for bad in [
            "",
            "tcp://127.0.0.1:8081",
            "unix://host/x",
            "http://x",
            "unix:",
        ] {
            let e = parse_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains("socket"), "{bad:?}: {e}");
        }
        assert!(parse_endpoint("tcp://127.0.0.1:1")
            .unwrap_err()
            .to_string()
            .contains("plaintext"));
    }

    #[test]
    fn config_shape_and_checks() {
        let c: WorkloadCfg = serde_json::from_str(
            r#"{"socket":"unix:///tmp/a.sock","trust_domain":"example.org","first_svid_timeout_ms":500}"#,
        )
        .unwrap();
        assert_eq!(c.first_svid_timeout_ms, 500);
        assert_eq!(c.reconnect_max_ms, default_reconnect_max_ms());
        c.validate().unwrap();
        assert_eq!(c.endpoint().unwrap(), "unix:///tmp/a.sock");
        assert!(serde_json::from_str::<WorkloadCfg>(r#"{"sokcet":"x"}"#).is_err());
        let e = WorkloadCfg {
            trust_domain: Some("Example.org".into()),
            ..WorkloadCfg::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("workload.trust_domain"), "{e}");
        let e = WorkloadCfg {
            reconnect_min_ms: 500,
            reconnect_max_ms: 100,
            ..WorkloadCfg::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string().starts_with("workload.reconnect_max_ms"),
            "{e}"
        );
        let e = WorkloadCfg {
            first_svid_timeout_ms: 0,
            ..WorkloadCfg::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("first_svid_timeout_ms"), "{e}");
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(100, 350);
        let ms: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert!((80..=120).contains(&ms[0]), "{ms:?}");
        assert!((160..=240).contains(&ms[1]), "{ms:?}");
        assert!((280..=420).contains(&ms[2]), "{ms:?}");
        assert!((280..=420).contains(&ms[4]), "{ms:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 120);
    }

    #[test]
    fn error_chain_skips_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(error_chain(&io), "no such file");
    }
}
