//! The accept loop: TCP, optional TLS (with the client's certificate
//! identity captured once per connection), HTTP/1.1 with bounded header
//! time so a slow client cannot hold a connection open for free, and caps
//! on open connections in total and per client address.
//!
//! The header timeout also bounds an idle kept-alive connection: hyper
//! (1.4 and later) starts the header clock again as soon as a response is
//! written, so a connection that sends nothing for that long is closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_identity::tls::PeerCert;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::Limits;

/// The listener's bounds on slow or numerous clients.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// How long a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client has to send a request's headers (and how long a
    /// kept-alive connection may sit idle between requests).
    pub header_timeout: Duration,
    /// Most connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits::from(&Limits::default())
    }
}

impl From<&Limits> for ConnLimits {
    fn from(l: &Limits) -> Self {
        ConnLimits {
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            header_timeout: Duration::from_millis(l.header_timeout_ms),
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
        }
    }
}

/// Open connections, in total and per client address.
struct Counter {
    limits: ConnLimits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Refusals since the last log line, and when that line was written
    /// (milliseconds since `epoch`), so a flood logs once a second.
    refused: AtomicU64,
    last_log_ms: AtomicU64,
    epoch: Instant,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Total,
    PerIp,
}

impl Counter {
    fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Counter {
            limits,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Counts a new connection from `ip`, or refuses it if a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refusal> {
        let ip = ip.to_canonical();
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.limits.max_connections_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(ConnGuard {
            counter: self.clone(),
            ip,
        })
    }

    /// Logs a refusal, at most one line a second (with the count since).
    fn refused(&self, remote: SocketAddr, why: Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // Milliseconds since `epoch`, plus one so that 0 means "never logged".
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        if self
            .last_log_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let n = self.refused.swap(0, Ordering::Relaxed);
        let (limit, max) = match why {
            Refusal::Total => ("max_connections", self.limits.max_connections),
            Refusal::PerIp => ("max_connections_per_ip", self.limits.max_connections_per_ip),
        };
        tracing::info!(
            %remote,
            limit,
            max,
            refused_since_last_log = n,
            "connection refused: too many open connections"
        );
    }
}

/// One counted connection; uncounted when dropped (the task ends).
struct ConnGuard {
    counter: Arc<Counter>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        {
            let mut map = self
                .counter
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        self.counter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Facts about the connection a request arrived on, for every later stage.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The local address (the listener) the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate, if one was presented.
    pub peer: Option<Arc<PeerCert>>,
}

/// Told of every client certificate a TLS handshake refused (remote
/// address, reason), so the refusal reaches the audit log: the listener
/// itself knows nothing of auditing.
pub type CertRefused = Arc<dyn Fn(SocketAddr, String) + Send + Sync>;

/// The refusal in a failed handshake's error when it was the client's
/// certificate (untrusted, wrong SPIFFE ID, revoked, expired, missing), as
/// opposed to a scanner or a client speaking plain HTTP.
fn certificate_refusal(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let why = match inner {
        // The verifier's own reason (trust domain, SPIFFE ID, deny list).
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => o.0.to_string(),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            inner.to_string()
        }
        _ => return None,
    };
    Some(format!(
        "client certificate refused in the TLS handshake: {why}"
    ))
}

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: ConnLimits,
    refused: Option<CertRefused>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let counter = Counter::new(limits);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "listener has no address");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let guard = match counter.admit(remote.ip()) {
            Ok(g) => g,
            Err(why) => {
                // Dropping the socket closes it before anything is read.
                drop(tcp);
                counter.refused(remote, why);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match acceptor {
                None => {
                    let info = ConnInfo {
                        remote,
                        local,
                        tls: false,
                        peer: None,
                    };
                    serve_conn(TokioIo::new(tcp), info, app, limits.header_timeout).await;
                }
                Some(acc) => {
                    let stream =
                        match tokio::time::timeout(limits.handshake_timeout, acc.accept(tcp)).await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(%remote, error = %e, "TLS handshake failed");
                                if let (Some(why), Some(tell)) = (certificate_refusal(&e), &refused)
                                {
                                    tell(remote, why);
                                }
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                    let peer = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| PeerCert::from_der(der.as_ref()).ok())
                        .map(Arc::new);
                    let info = ConnInfo {
                        remote,
                        local,
                        tls: true,
                        peer,
                    };
                    serve_conn(TokioIo::new(stream), info, app, limits.header_timeout).await;
                }
            }
        });
    }
}

async fn serve_conn<I>(io: TokioIo<I>, info: ConnInfo, app: Router, header_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> ConnLimits {
        ConnLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..ConnLimits::default()
        }
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_guards_release() {
        let c = Counter::new(limits(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // IPv4-mapped IPv6 is the same client as the IPv4 address.
        let a6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let g1 = c.admit(a).unwrap();
        let g2 = c.admit(a6).unwrap();
        assert!(matches!(c.admit(a), Err(Refusal::PerIp)));
        let g3 = c.admit(b).unwrap();
        assert!(matches!(c.admit(b), Err(Refusal::Total)));
        assert_eq!(c.total.load(Ordering::Acquire), 3);
        drop(g1);
        let g4 = c.admit(a).unwrap();
        drop((g2, g3, g4));
        assert_eq!(c.total.load(Ordering::Acquire), 0);
        assert!(c.per_ip.lock().unwrap().is_empty(), "no entry left behind");
    }

    #[test]
    fn defaults_follow_the_config_defaults() {
        let l = ConnLimits::default();
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert_eq!((l.max_connections, l.max_connections_per_ip), (10_000, 256));
    }
}
