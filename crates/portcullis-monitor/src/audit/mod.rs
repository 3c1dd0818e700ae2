//! The tamper-evident audit log: one JSON Lines record per event, each
//! chained to the previous one by SHA-256, with periodic checkpoints signed
//! by the gateway's Ed25519 key.
//!
//! # Record schema, version 1
//!
//! Every line of the log is one UTF-8 JSON object terminated by `\n`, with
//! the members in exactly this order:
//!
//! ```text
//! {"v":1,"seq":<u64>,"ts":"<YYYY-MM-DDTHH:MM:SS.ffffffZ>","kind":"<kind>",<body members…>,"prev":"<64 hex>"}
//! ```
//!
//! * `v` — schema version, always `1` for this layout.
//! * `seq` — record number, starting at 1 and contiguous across rotated
//!   files (every record counts, including writer-generated ones).
//! * `ts` — RFC 3339 UTC with microseconds, assigned by the writer thread;
//!   never decreases along `seq` (a clock stepping backwards is clamped).
//! * `kind` — what the record is. The writer reserves `checkpoint`, `open`
//!   and `recovery`; an [`AuditLog::append`] with one of those kinds is
//!   stored as `x-<kind>`.
//! * body members — the caller's body object, merged in. A body member named
//!   `v`, `seq`, `ts`, `kind` or `prev`, a body that is not a JSON object, or
//!   a body that fails to serialise is stored under `"body"` (or
//!   `"body_error"`) instead so the header can never be shadowed.
//! * `prev` — lowercase hex SHA-256 of the previous record's line bytes
//!   (without the newline); 64 zeros for record 1.
//!
//! A record's hash is the SHA-256 of its line bytes without the newline.
//!
//! Writer-generated kinds:
//!
//! * `checkpoint` — body `"head":"<hex>","count":<n>,"key":"<hex>","sig":"<hex>"`:
//!   `head` is the hash of the previous record (equal to `prev`), `count` the
//!   number of records before this one (`seq - 1`), `key` the Ed25519 public
//!   key and `sig` the Ed25519 signature over the bytes
//!   `portcullis-audit-checkpoint-v2\n<seq>\n<ts>\n<head>` (its own `ts`
//!   included: nothing chains after the last checkpoint; `verify` still
//!   accepts the v1 form `…-v1\n<seq>\n<head>` of older logs). Written every
//!   [`AuditConfig::checkpoint_every`] records, after
//!   [`AuditConfig::checkpoint_interval`] if records were added, before
//!   rotation and at clean shutdown. Each checkpoint line is also copied to
//!   the anchor sink.
//! * `open` — body `"file":"<file name>","reason":"new"|"rotate"|"restart"`:
//!   the first record of a new chain, of every rotated-in file, and of every
//!   process start.
//! * `recovery` — body `"file":"<name>","offset":<n>,"len":<n>,"sha256":"<hex>"`:
//!   the previous run left a partial last line (a crash mid-write); those
//!   bytes were truncated away and this record makes that visible in the
//!   chain. [`verify`] lists every one in [`VerifyReport::recoveries`].
//!
//! # Files
//!
//! The live file (e.g. `audit.jsonl`) is rotated once it exceeds
//! [`AuditConfig::rotate_bytes`]: a checkpoint is written, the file is
//! renamed to `audit.jsonl.<first seq, 12 digits>` and a new live file starts
//! with an `open` record (reason `rotate`) chained to the last record of the
//! old one. [`rotated_files`] lists them oldest first.
//!
//! # Durability
//!
//! All file I/O happens on one dedicated OS thread; callers only serialise
//! their body and push it onto a queue. See [`SyncMode`] for what
//! [`AuditLog::durable`] promises in each mode. The first write or sync
//! error (e.g. `ENOSPC`) stops the writer for good: every unacknowledged and
//! later ticket then fails [`AuditLog::durable`], so the gateway fails
//! closed until it is restarted (which recovers any partial line).
//!
//! # Limits
//!
//! * One process per log: nothing locks the file, so two writers on the
//!   same path would fork the chain.
//! * A clean cut of trailing records (no partial line) is invisible to the
//!   chain alone; it is caught by anchors ([`VerifyOptions::anchors`]) or,
//!   for the unsigned tail only, by [`VerifyOptions::strict`].
//! * All checkpoints must be signed by one key; replacing the key file makes
//!   [`verify`] stop at the first checkpoint signed by the new key.
//! * Verification needs the oldest file to prove record 1; if older rotated
//!   files were pruned, the report warns that the start is unchecked.

mod files;
mod key;
mod record;
mod tail;
mod verify;
mod writer;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use files::rotated_files;
pub use key::load_public_key;
pub use tail::{follow, TailFilter};
pub use verify::{verify, VerifyFailure, VerifyOptions, VerifyReport};
pub use writer::{AuditLog, AuditStats, Ticket};

/// When an append counts as durable, trading latency against what a crash can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` before the append is acknowledged: survives power loss.
    Record,
    /// Acknowledged once `write(2)` has put the record in the file, so a
    /// process crash (even `kill -9`) loses nothing acknowledged; the file is
    /// `fdatasync`ed every [`AuditConfig::group_commit`], so a power loss or
    /// kernel crash loses at most the records of the last interval.
    #[default]
    Group,
    /// Acknowledged after `write(2)`, never `fsync`ed: the OS decides.
    None,
}

impl FromStr for SyncMode {
    type Err = ParseSyncModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "record" => Ok(SyncMode::Record),
            "group" => Ok(SyncMode::Group),
            "none" => Ok(SyncMode::None),
            _ => Err(ParseSyncModeError(s.to_string())),
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::Record => "record",
            SyncMode::Group => "group",
            SyncMode::None => "none",
        })
    }
}

/// A sync mode string that is not `record`, `group` or `none`, so config errors name the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit sync mode {0:?} (expected record, group or none)")]
pub struct ParseSyncModeError(pub String);

/// Where checkpoint lines are copied so history cannot be rewritten unseen by someone who owns the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorSink {
    /// Standard output, for a log shipper to collect.
    Stdout,
    /// A second file (ideally on another disk or an append-only mount).
    File(PathBuf),
}

/// How the audit log is written, so the gateway's config maps onto it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The live file, e.g. `audit.jsonl`; its directory must exist.
    pub path: PathBuf,
    /// When appends are acknowledged (default [`SyncMode::Group`]).
    pub sync: SyncMode,
    /// The `fdatasync` interval in [`SyncMode::Group`] (default 5 ms).
    pub group_commit: Duration,
    /// A checkpoint after this many records (default 1000).
    pub checkpoint_every: u64,
    /// A checkpoint after this long if records were added since the last one (default 10 s).
    pub checkpoint_interval: Duration,
    /// Rotate when the live file exceeds this many bytes (default 64 MiB).
    pub rotate_bytes: Option<u64>,
    /// Every checkpoint line is also appended here.
    pub anchors: Option<AnchorSink>,
    /// Ed25519 PKCS#8 private key (DER); created with mode 0600 if missing,
    /// with the public key written as hex to `<key_path>.pub`.
    pub key_path: PathBuf,
}

impl AuditConfig {
    /// A config with the defaults, so callers set only what they change.
    pub fn new(path: PathBuf, key_path: PathBuf) -> Self {
        AuditConfig {
            path,
            sync: SyncMode::Group,
            group_commit: Duration::from_millis(5),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            rotate_bytes: Some(64 * 1024 * 1024),
            anchors: None,
            key_path,
        }
    }
}

/// Why the audit log could not be opened or written, so the gateway can fail closed with a reason.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file or directory could not be read, created or written.
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The signing key could not be loaded or created.
    #[error("audit key {}: {reason}", path.display())]
    Key {
        /// The key path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// An existing log cannot be continued (its last record is not a valid record).
    #[error("audit log {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The writer thread hit an error (e.g. disk full) or was shut down; nothing more will be recorded.
    #[error("audit log writer failed: {0}")]
    Failed(String),
}
