//! JSON-RPC error codes and the wire-level error type.

use thiserror::Error;

/// Error codes, named so that every place that answers an error picks the
/// same number for the same failure.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not available to this caller.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error (never used to hide a policy decision).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// MCP: resource not found.
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// Portcullis: the upstream that owns the target is unavailable.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32010;
    /// Portcullis: the upstream did not answer within the call timeout.
    pub const UPSTREAM_TIMEOUT: i64 = -32011;
    /// Portcullis: the upstream answered with something that is not MCP.
    pub const UPSTREAM_PROTOCOL: i64 = -32012;
    /// Portcullis: the upstream's circuit breaker is open (it kept failing);
    /// `data.retryAfterSeconds` says when a probe will be let through.
    pub const CIRCUIT_OPEN: i64 = -32013;
    /// Portcullis: the caller is quarantined (or the kill switch is on).
    pub const QUARANTINED: i64 = -32032;
    /// Portcullis: a rate limit applies; `data.retryAfterSeconds` says when to retry.
    pub const RATE_LIMITED: i64 = -32029;
    /// Portcullis: the request was denied by policy (or its approval refused).
    pub const POLICY_DENIED: i64 = -32030;
    /// The audit log cannot record the request: the gateway fails closed.
    pub const AUDIT_UNAVAILABLE: i64 = -32031;
    /// Portcullis: the upstream answered, but inspection withheld the result
    /// (DLP `block`, or injection markers under `block`); `data.reason` says
    /// which (`dlp`, `injection`), never what was found.
    pub const RESULT_WITHHELD: i64 = -32033;
    /// 2026-07-28: an `Mcp-*` header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: a capability the request needs was not declared.
    pub const MISSING_CAPABILITY: i64 = -32021;
    /// 2026-07-28: unsupported protocol version.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

/// Why bytes could not become a message; each maps to one JSON-RPC code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Not JSON at all.
    #[error("parse error: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Nested deeper than the configured bound (checked before parsing).
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    /// A batch where the negotiated revision does not allow one.
    #[error("JSON-RPC batches are not supported by this protocol revision")]
    BatchNotAllowed,
}

impl WireError {
    /// The JSON-RPC error code that answers this failure.
    pub fn code(&self) -> i64 {
        match self {
            WireError::Parse(_) => codes::PARSE_ERROR,
            WireError::Invalid(_) | WireError::TooDeep(_) | WireError::BatchNotAllowed => {
                codes::INVALID_REQUEST
            }
        }
    }
}
