//! Content inspection: what servers say is untrusted input. For now: DLP
//! classes and redaction of results, used by the `redact` policy
//! obligation.
#![forbid(unsafe_code)]

pub mod args;
pub mod dlp;
pub mod eval;
pub mod finding;
pub mod inject;
pub mod pin;
pub mod poison;
pub mod unicode;
