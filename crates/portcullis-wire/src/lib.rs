//! The MCP wire as Portcullis sees it: JSON-RPC messages kept as raw JSON
//! except for the few fields the pipeline polices, SSE and stdio framing,
//! and the protocol revisions the gateway speaks.
//!
//! Nothing here performs I/O; every function is a pure transformation so that
//! each can be tested and fuzzed alone.
#![forbid(unsafe_code)]

pub mod depth;
pub mod error;
pub mod headers;
pub mod message;
pub mod revision;
pub mod sse;
pub mod stdio;

pub use error::{codes, WireError};
pub use message::{Body, Kind, Message, RawObject};
pub use revision::Revision;
