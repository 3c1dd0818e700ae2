//! One live way to reach an upstream, whatever its transport and revision.

use std::sync::Arc;
use std::time::Duration;

use portcullis_wire::{Message, Revision};
use serde_json::Value;

use crate::upstream::http::{HttpSession, StatelessHttp};
use crate::upstream::stdio::StdioUpstream;
use crate::upstream::{Events, UpstreamError};

/// A connection the gateway can send calls over.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "cloned per call; boxing would add an allocation each time"
)]
pub enum Conn {
    /// A handshake-era HTTP session held by the gateway.
    Session(Arc<HttpSession>),
    /// A 2026-07-28 HTTP upstream (no session), with its discover result.
    Stateless(StatelessHttp, Arc<Value>),
    /// The shared stdio child.
    Stdio(Arc<StdioUpstream>),
}

impl Conn {
    /// The revision this connection speaks.
    pub fn revision(&self) -> Revision {
        match self {
            Conn::Session(s) => s.revision(),
            Conn::Stateless(..) => Revision::V2026_07_28,
            Conn::Stdio(_) => Revision::LATEST_HANDSHAKE,
        }
    }

    /// The upstream's capabilities.
    pub fn capabilities(&self) -> Value {
        self.describe()
            .get("capabilities")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The upstream's `initialize` (or `server/discover`) result.
    pub fn describe(&self) -> Value {
        match self {
            Conn::Session(s) => (*s.init).clone(),
            Conn::Stateless(_, d) => (**d).clone(),
            Conn::Stdio(s) => s.init().unwrap_or(Value::Null),
        }
    }

    /// Sends a request and waits for its response, up to `timeout`;
    /// `forwarded` are client `Mcp-Param-*` headers (HTTP 2026-07-28 only).
    pub async fn call(
        &self,
        msg: &Message,
        forwarded: &[(String, String)],
        events: &Events,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        match self {
            Conn::Session(s) => s.call(msg, events).await,
            Conn::Stateless(s, _) => s.call(msg, forwarded, events).await,
            Conn::Stdio(s) => s.call(msg, events, timeout).await,
        }
    }

    /// Sends a notification or a response to a server request.
    pub async fn notify(&self, msg: &Message, timeout: Duration) -> Result<(), UpstreamError> {
        match self {
            Conn::Session(s) => s.notify(msg).await,
            // 2026-07-28 has no client notifications over HTTP worth sending:
            // cancellation is closing the stream.
            Conn::Stateless(..) => Ok(()),
            Conn::Stdio(s) => s.notify(msg, timeout).await,
        }
    }
}
