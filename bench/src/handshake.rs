//! `--handshakes`: fresh connections back to back from C workers, each a
//! full TLS handshake (no resumption), optionally followed by one request.
//!
//! Without a request, a connection is complete when the client has sent
//! `close_notify` and the server has closed in turn: that round trip makes
//! sure the server finished its side of the handshake (in TLS 1.3 the
//! server checks the client certificate after the client is done, and
//! refuses it with an alert the client only reads afterwards).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mcp::{self, CallError, Target};
use crate::stats::SessionStats;
use crate::Plan;

/// What one worker measured.
#[derive(Default)]
pub struct WorkerStats {
    /// Latencies (connect to done) and errors.
    pub stats: SessionStats,
    /// HTTP statuses of the optional request.
    pub statuses: BTreeMap<u16, u64>,
}

/// Sends `close_notify` (or FIN) and waits until the server closes too.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<(), CallError> {
    s.shutdown()
        .await
        .map_err(|e| CallError::new("transport", format!("shutdown: {e}")))?;
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The server closed without its own close_notify: still done.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(CallError::new("tls", format!("after the handshake: {e}"))),
        }
    }
}

/// One request on the fresh connection; 401 and 403 count as failures.
async fn request<S>(t: &Target, s: S) -> Result<u16, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut sender = mcp::http1(s).await?;
    let resp = sender
        .send_request(t.probe()?)
        .await
        .map_err(|e| CallError::new("transport", e))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| CallError::new("transport", e))?;
    if status == hyper::StatusCode::UNAUTHORIZED || status == hyper::StatusCode::FORBIDDEN {
        return Err(CallError::new("auth", format!("HTTP {status}")));
    }
    Ok(status.as_u16())
}

/// One connection: TCP connect, TLS handshake, then a request or a close.
async fn once(t: &Target, with_request: bool) -> Result<Option<u16>, CallError> {
    let tcp = mcp::tcp(t).await?;
    match &t.tls {
        Some((connector, name)) => {
            let tls = mcp::tls_handshake(connector, name, tcp).await?;
            if with_request {
                request(t, tls).await.map(Some)
            } else {
                close(tls).await.map(|()| None)
            }
        }
        None => {
            if with_request {
                request(t, tcp).await.map(Some)
            } else {
                close(tcp).await.map(|()| None)
            }
        }
    }
}

/// A worker: connections back to back until the plan says stop.
pub async fn worker(t: Arc<Target>, plan: Arc<Plan>, with_request: bool) -> WorkerStats {
    let mut w = WorkerStats::default();
    while let Some(counted) = plan.next() {
        let start = Instant::now();
        let r = match tokio::time::timeout(t.timeout, once(&t, with_request)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::new(
                "timeout",
                format!("not done within {} ms", t.timeout.as_millis()),
            )),
        };
        let end = Instant::now();
        let failed = r.is_err();
        if plan.counts(counted, start, end) {
            match r {
                Ok(status) => {
                    w.stats
                        .samples
                        .push(end.duration_since(start).as_nanos().min(u64::MAX as u128) as u64);
                    if let Some(s) = status {
                        *w.statuses.entry(s).or_insert(0) += 1;
                    }
                }
                Err(e) => w.stats.error(e.kind, &e.detail),
            }
            w.stats.last_end = w.stats.last_end.max(end.saturating_duration_since(plan.t0));
        }
        if failed {
            // Do not spin on a refusing endpoint.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    w
}
