//! Upstream connections: how the gateway talks to the MCP servers behind it.
//!
//! Every connection offers the same call shape: send one request (with an id
//! the gateway chose), pass every related server message (progress,
//! logging, server→client requests) to an events channel, and return the
//! final response. Whether that rides an HTTP POST, an SSE stream or a
//! shared stdio pipe is the connection's business.

pub mod http;
pub mod stdio;

use portcullis_wire::{codes, Message};
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::mpsc;

/// Sender for server messages related to a call, in arrival order.
pub type Events = mpsc::Sender<Message>;

/// Why an upstream call did not produce a response.
#[derive(Debug, Error, Clone)]
pub enum UpstreamError {
    /// Could not connect, or the server process is not running.
    #[error("upstream {0} is unavailable: {1}")]
    Unavailable(String, String),
    /// No answer within the call timeout.
    #[error("upstream {0} did not answer within {1} ms")]
    Timeout(String, u64),
    /// The upstream answered with something that is not MCP.
    #[error("upstream {0} broke the protocol: {1}")]
    Protocol(String, String),
    /// The upstream no longer knows the session the gateway held.
    #[error("upstream {0} ended the session")]
    SessionGone(String),
    /// The upstream's circuit breaker is open: not tried at all.
    #[error("upstream {0} is failing and its circuit is open; retry in {1} s")]
    CircuitOpen(String, u64),
}

impl UpstreamError {
    /// The JSON-RPC error that tells the caller, and only the caller.
    pub fn to_message(&self, id: Option<Box<RawValue>>) -> Message {
        let code = match self {
            UpstreamError::Unavailable(..) | UpstreamError::SessionGone(_) => {
                codes::UPSTREAM_UNAVAILABLE
            }
            UpstreamError::Timeout(..) => codes::UPSTREAM_TIMEOUT,
            UpstreamError::Protocol(..) => codes::UPSTREAM_PROTOCOL,
            UpstreamError::CircuitOpen(_, secs) => {
                return Message::error(
                    id,
                    codes::CIRCUIT_OPEN,
                    &self.to_string(),
                    Some(serde_json::json!({"retryAfterSeconds": secs})),
                )
            }
        };
        Message::error(id, code, &self.to_string(), None)
    }
}
