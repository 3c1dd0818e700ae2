//! Content inspection: what servers say is untrusted input. DLP on results
//! and arguments (`dlp`), suspicious arguments (`args`), tool pins against
//! rug-pulls (`pin`), poisoning and invisible Unicode in definitions
//! (`poison`, `unicode`), shadowing across servers (`shadow`) and injection
//! markers in results (`inject`). Pure functions over JSON: no I/O, no MCP
//! session state.
#![forbid(unsafe_code)]

pub mod args;
pub mod dlp;
pub mod eval;
pub mod finding;
pub mod inject;
pub mod pin;
pub mod poison;
pub mod shadow;
pub mod unicode;
