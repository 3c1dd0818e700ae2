//! Why a Redis store could not be opened (store operations themselves fail
//! with `portcullis_contain::StoreError`, the trait's error).

use thiserror::Error;

/// Opening the store failed; each variant says what to fix.
#[derive(Debug, Error)]
pub enum RedisStoreError {
    /// The configuration is inconsistent (the message names the field).
    #[error("redis config: {0}")]
    Config(String),
    /// A file the configuration names could not be read.
    #[error("redis config: cannot read {what} {path}: {source}")]
    Read {
        /// Which setting (`ca`, `cert`, `key`, `password_file`).
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server refused the credentials (or demanded some and got none).
    #[error("redis {target}: authentication failed ({detail}); check the username and password (password_file / password_env / URL)")]
    Auth {
        /// Where (no credentials).
        target: String,
        /// The server's or client's words.
        detail: String,
    },
    /// The server could not be reached or the TLS handshake failed.
    #[error("redis {target}: cannot connect: {detail}")]
    Connect {
        /// Where (no credentials).
        target: String,
        /// The cause.
        detail: String,
    },
}
