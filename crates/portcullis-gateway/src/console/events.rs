//! `GET /console/events`: live decisions as Server-Sent Events (event
//! `decision`, data the JSON of [`LiveDecision`]). Bounded: at most
//! [`MAX_WATCHERS`] streams at once, and a stream that falls behind skips
//! decisions (a comment says how many) rather than slow the request path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use crate::monitor::{DecisionFeed, LiveDecision};

/// Live-decision streams open at once, at most.
pub const MAX_WATCHERS: usize = 16;
/// A comment this often keeps idle streams (and proxies) open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One SSE event of a decision.
pub fn event(d: &LiveDecision) -> Bytes {
    let json = serde_json::to_string(d).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: decision\ndata: {json}\n\n"))
}

/// Counts a stream as open while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The SSE answer, or 503 when [`MAX_WATCHERS`] streams are open.
pub fn stream(open: &Arc<AtomicUsize>, feed: impl FnOnce() -> DecisionFeed) -> Response {
    if open.fetch_add(1, Ordering::AcqRel) >= MAX_WATCHERS {
        open.fetch_sub(1, Ordering::AcqRel);
        let mut r = Response::new(Body::from("too many live streams"));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    let slot = Slot(open.clone());
    let feed = feed();
    let first = Bytes::from_static(b"retry: 3000\n: live decisions\n\n");
    let s = futures_util::stream::unfold(
        (Some(first), feed, slot),
        |(first, mut feed, slot)| async move {
            if let Some(b) = first {
                return Some((Ok::<_, std::convert::Infallible>(b), (None, feed, slot)));
            }
            let chunk = match tokio::time::timeout(KEEPALIVE, feed.next()).await {
                Err(_) => Bytes::from_static(b": keepalive\n\n"),
                Ok(Ok(Some(d))) => event(&d),
                Ok(Ok(None)) => return None,
                Ok(Err(skipped)) => Bytes::from(format!(": skipped {skipped}\n\n")),
            };
            Some((Ok(chunk), (None, feed, slot)))
        },
    );
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_shape() {
        let d = LiveDecision {
            time: 1,
            identity: "w=-;u=-".into(),
            method: "tools/call".into(),
            tool: "demo__echo".into(),
            decision: "deny",
            policy: "p".into(),
            latency_us: 7,
        };
        let e = String::from_utf8(event(&d).to_vec()).unwrap();
        assert!(e.starts_with("event: decision\ndata: {"), "{e}");
        assert!(e.ends_with("}\n\n"));
        let v: serde_json::Value =
            serde_json::from_str(e.trim_end().split_once("data: ").unwrap().1).unwrap();
        for k in [
            "time",
            "identity",
            "method",
            "tool",
            "decision",
            "policy",
            "latency_us",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    #[tokio::test]
    async fn streams_are_bounded() {
        let m = crate::monitor::Monitor::without_audit(&crate::config::Config::empty());
        let open = Arc::new(AtomicUsize::new(0));
        let mut held = Vec::new();
        for _ in 0..MAX_WATCHERS {
            let r = stream(&open, || m.watch_decisions());
            assert_eq!(r.status(), StatusCode::OK);
            held.push(r);
        }
        assert_eq!(m.decision_watchers(), MAX_WATCHERS);
        let r = stream(&open, || m.watch_decisions());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(m.decision_watchers(), MAX_WATCHERS);
        drop(held);
        assert_eq!(open.load(Ordering::Acquire), 0);
        assert_eq!(m.decision_watchers(), 0);
    }
}
