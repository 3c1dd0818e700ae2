//! Offline verification of a (possibly rotated) audit log and its anchors.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::Deserialize;

use super::record::{self, Parsed, TS_LEN, ZERO_HASH};

/// What to check beyond the chain itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The pinned Ed25519 public key (32 bytes); without it the key named in
    /// the first checkpoint is trusted, and the report says so.
    pub key: Option<Vec<u8>>,
    /// Exported anchor checkpoints that must all appear, identically, in the log.
    pub anchors: Option<PathBuf>,
    /// Treat records after the last checkpoint (unsigned) as an error.
    pub strict: bool,
}

/// What a successful verification covered, so the operator sees exactly what was proven.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files read.
    pub files: usize,
    /// Records checked (all kinds).
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// `seq` of the first record.
    pub first_seq: u64,
    /// `seq` of the last record.
    pub last_seq: u64,
    /// Records after the last checkpoint (chained but not yet signed).
    pub unsigned_tail: u64,
    /// Every recovery record (a crash left a partial line that was truncated).
    pub recoveries: Vec<String>,
    /// Things that are not failures but limit what was proven.
    pub warnings: Vec<String>,
    /// The key checkpoints were verified with.
    pub key_hex: Option<String>,
}

/// The first problem found: which file and 1-based line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct VerifyFailure {
    /// The file holding the bad record.
    pub file: PathBuf,
    /// 1-based line number (0 when the file itself could not be read).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

fn failure(file: &Path, line: u64, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        file: file.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

const CHAIN: &str =
    "record does not chain to the previous one (edited, deleted, inserted or reordered)";

/// Checks the files (oldest first, e.g. from [`super::rotated_files`]) as
/// one chain and returns what was proven, or the first bad record.
pub fn verify(files: &[PathBuf], opts: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
    let Some(first) = files.first() else {
        return Err(failure(Path::new(""), 0, "no files to verify"));
    };
    let mut v = Verifier::new(opts)?;
    for path in files {
        v.file(path)?;
    }
    v.finish(first)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointBody {
    head: String,
    count: u64,
    key: String,
    sig: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    #[expect(dead_code, reason = "parsed to check the record's shape")]
    file: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryBody {
    file: String,
    offset: u64,
    len: u64,
    sha256: String,
}

fn parse_body<T: for<'de> Deserialize<'de>>(inner: &[u8]) -> Option<T> {
    let mut obj = Vec::with_capacity(inner.len() + 2);
    obj.push(b'{');
    obj.extend_from_slice(inner);
    obj.push(b'}');
    serde_json::from_slice(&obj).ok()
}

/// One exported anchor checkpoint.
struct Anchor {
    line: u64,
    hash: [u8; 32],
    bytes: Vec<u8>,
}

struct Verifier<'o> {
    opts: &'o VerifyOptions,
    report: VerifyReport,
    prev: Option<[u8; 32]>,
    prev2: Option<[u8; 32]>,
    last_seq: u64,
    last_ts: [u8; TS_LEN],
    last_loc: (PathBuf, u64),
    key: Option<Vec<u8>>,
    unsigned: u64,
    first_unsigned: Option<(PathBuf, u64)>,
    anchors: BTreeMap<u64, Anchor>,
}

impl<'o> Verifier<'o> {
    fn new(opts: &'o VerifyOptions) -> Result<Self, VerifyFailure> {
        let mut v = Verifier {
            opts,
            report: VerifyReport::default(),
            prev: None,
            prev2: None,
            last_seq: 0,
            last_ts: [b'0'; TS_LEN],
            last_loc: (PathBuf::new(), 0),
            key: opts.key.clone(),
            unsigned: 0,
            first_unsigned: None,
            anchors: BTreeMap::new(),
        };
        v.report.key_hex = opts.key.as_ref().map(hex::encode);
        if let Some(path) = &opts.anchors {
            v.load_anchors(path)?;
        }
        Ok(v)
    }

    fn load_anchors(&mut self, path: &Path) -> Result<(), VerifyFailure> {
        let text = std::fs::read(path)
            .map_err(|e| failure(path, 0, format!("cannot read anchors: {e}")))?;
        let mut rest = text.as_slice();
        let mut lineno = 0;
        while !rest.is_empty() {
            lineno += 1;
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                self.report.warnings.push(format!(
                    "{}:{lineno}: partial last anchor line ignored",
                    path.display()
                ));
                break;
            };
            let (line, tail) = rest.split_at(nl);
            rest = tail.get(1..).unwrap_or_default();
            let bad = |why: &str| failure(path, lineno, format!("malformed anchor: {why}"));
            let parsed = record::parse_line(line).map_err(bad)?;
            if !record::line_is_json(line) {
                return Err(bad("not valid JSON"));
            }
            if parsed.kind != "checkpoint" {
                return Err(bad("not a checkpoint"));
            }
            let anchor = Anchor {
                line: lineno,
                hash: record::sha256(line),
                bytes: line.to_vec(),
            };
            if let Some(old) = self.anchors.get(&parsed.seq) {
                if old.hash != anchor.hash {
                    return Err(failure(
                        path,
                        lineno,
                        format!(
                            "two different anchors for seq {} (lines {} and {lineno})",
                            parsed.seq, old.line
                        ),
                    ));
                }
            }
            self.anchors.insert(parsed.seq, anchor);
        }
        Ok(())
    }

    fn file(&mut self, path: &Path) -> Result<(), VerifyFailure> {
        let file = File::open(path).map_err(|e| failure(path, 0, format!("cannot open: {e}")))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::with_capacity(1024);
        let mut lineno = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| failure(path, lineno + 1, format!("read error: {e}")))?;
            if n == 0 {
                break;
            }
            lineno += 1;
            if line.last() != Some(&b'\n') {
                return Err(failure(path, lineno, "partial record (truncated write)"));
            }
            line.pop();
            self.record(path, lineno, &line, &mut reader)?;
        }
        if lineno == 0 {
            self.report
                .warnings
                .push(format!("{}: empty file", path.display()));
        }
        self.report.files += 1;
        self.last_loc = (path.to_path_buf(), lineno);
        Ok(())
    }

    fn record(
        &mut self,
        path: &Path,
        lineno: u64,
        line: &[u8],
        reader: &mut impl BufRead,
    ) -> Result<(), VerifyFailure> {
        let bad = |reason: String| failure(path, lineno, reason);
        let rec =
            record::parse_line(line).map_err(|why| bad(format!("malformed record: {why}")))?;
        if !record::line_is_json(line) {
            return Err(bad("malformed record: not valid JSON".into()));
        }
        if record::scan_members(rec.inner).reserved {
            return Err(bad(
                "malformed record: the body repeats a header field".into()
            ));
        }
        if rec.seq == 0 {
            return Err(bad(
                "malformed record: seq 0 (records are numbered from 1)".into()
            ));
        }
        let hash = record::sha256(line);
        match self.prev {
            Some(prev) => {
                let Some(expected) = self.last_seq.checked_add(1) else {
                    return Err(bad(format!(
                        "malformed record: no seq can follow seq {}",
                        self.last_seq
                    )));
                };
                if rec.prev != prev {
                    return Err(self.diagnose(path, lineno, &rec, reader));
                }
                if rec.seq != expected {
                    return Err(bad(format!(
                        "out of order / inserted: seq {} where {expected} was expected",
                        rec.seq
                    )));
                }
            }
            None => {
                if rec.seq == 1 {
                    if rec.prev != ZERO_HASH {
                        return Err(bad(
                            "malformed record: record 1 must have an all-zero prev".into()
                        ));
                    }
                } else {
                    self.report.warnings.push(format!(
                        "{}:{lineno}: the chain starts at seq {} (earlier files not supplied), so its link to record {} is not checked",
                        path.display(),
                        rec.seq,
                        rec.seq - 1
                    ));
                }
                self.report.first_seq = rec.seq;
            }
        }
        if rec.ts < self.last_ts.as_slice() {
            return Err(bad("timestamp goes backwards".into()));
        }
        let is_checkpoint = rec.kind == "checkpoint";
        match rec.kind.as_ref() {
            "checkpoint" => self.checkpoint(&rec, &bad)?,
            "open" => {
                let body: OpenBody = parse_body(rec.inner)
                    .ok_or_else(|| bad("malformed record: bad open record".into()))?;
                if !matches!(body.reason.as_str(), "new" | "rotate" | "restart") {
                    return Err(bad(format!(
                        "malformed record: unknown open reason {:?}",
                        body.reason
                    )));
                }
            }
            "recovery" => {
                let body: RecoveryBody = parse_body(rec.inner)
                    .ok_or_else(|| bad("malformed record: bad recovery record".into()))?;
                self.report.recoveries.push(format!(
                    "{}:{lineno}: a previous run left a partial record in {}: {} bytes at offset {} were truncated (sha256 {})",
                    path.display(),
                    body.file,
                    body.len,
                    body.offset,
                    body.sha256
                ));
            }
            _ => {}
        }
        if let Some(anchor) = self.anchors.get(&rec.seq) {
            if anchor.hash != hash {
                let anchors = self.opts.anchors.as_deref().unwrap_or(Path::new(""));
                return Err(bad(format!(
                    "record differs from anchor {}:{} (history rewritten)",
                    anchors.display(),
                    anchor.line
                )));
            }
        }
        if is_checkpoint {
            self.report.checkpoints += 1;
            self.unsigned = 0;
            self.first_unsigned = None;
        } else {
            if self.unsigned == 0 {
                self.first_unsigned = Some((path.to_path_buf(), lineno));
            }
            self.unsigned += 1;
        }
        self.report.records += 1;
        self.prev2 = self.prev;
        self.prev = Some(hash);
        self.last_seq = rec.seq;
        self.last_ts.copy_from_slice(rec.ts);
        self.last_loc = (path.to_path_buf(), lineno);
        Ok(())
    }

    /// Checks a checkpoint's head, count, key and signature.
    fn checkpoint(
        &mut self,
        rec: &Parsed<'_>,
        bad: &dyn Fn(String) -> VerifyFailure,
    ) -> Result<(), VerifyFailure> {
        let body: CheckpointBody =
            parse_body(rec.inner).ok_or_else(|| bad("malformed record: bad checkpoint".into()))?;
        if body.head != hex::encode(rec.prev) {
            return Err(bad(
                "checkpoint head does not match the previous record's hash".into(),
            ));
        }
        if body.count != rec.seq - 1 {
            return Err(bad(format!(
                "checkpoint count {} does not match seq {}",
                body.count, rec.seq
            )));
        }
        let key = hex::decode(&body.key)
            .map_err(|_| bad("malformed record: checkpoint key is not hex".into()))?;
        match &self.key {
            Some(trusted) if *trusted != key => {
                let reason = if self.opts.key.is_some() {
                    format!(
                        "checkpoint signed by key {} but the pinned key is {}",
                        body.key,
                        hex::encode(trusted)
                    )
                } else {
                    format!(
                        "checkpoint signed by key {} but earlier checkpoints used {}",
                        body.key,
                        hex::encode(trusted)
                    )
                };
                return Err(bad(reason));
            }
            Some(_) => {}
            None => {
                self.report.key_hex = Some(body.key.clone());
                self.key = Some(key.clone());
            }
        }
        if !signature_ok(&key, rec.seq, rec.ts, &body.head, &body.sig) {
            return Err(bad("checkpoint signature is invalid".into()));
        }
        Ok(())
    }

    /// Names the most likely bad line when `rec` does not chain to the last good record.
    fn diagnose(
        &self,
        path: &Path,
        lineno: u64,
        rec: &Parsed<'_>,
        reader: &mut impl BufRead,
    ) -> VerifyFailure {
        let expected = self.last_seq + 1;
        let (last_file, last_line) = &self.last_loc;
        if rec.seq == expected {
            return failure(
                last_file,
                *last_line,
                format!(
                    "record {} was edited: record {} at {}:{lineno} does not chain to it ({CHAIN})",
                    self.last_seq,
                    rec.seq,
                    path.display()
                ),
            );
        }
        if rec.seq > expected {
            if let Some(next) = peek_seq(reader) {
                if next < rec.seq {
                    return failure(
                        path,
                        lineno,
                        format!(
                            "out of order / reordered: record {} appears before record {next} ({CHAIN})",
                            rec.seq
                        ),
                    );
                }
            }
            let hint = if lineno == 1 && self.report.files > 0 {
                " — a rotated file may be missing"
            } else {
                ""
            };
            return failure(
                path,
                lineno,
                format!(
                    "records {expected}..{} missing (deleted){hint} ({CHAIN})",
                    rec.seq - 1
                ),
            );
        }
        if Some(rec.prev) == self.prev2 {
            return failure(
                last_file,
                *last_line,
                format!(
                    "out of order / inserted: record {} at {}:{lineno} chains past this one ({CHAIN})",
                    rec.seq,
                    path.display()
                ),
            );
        }
        failure(
            path,
            lineno,
            format!(
                "out of order / inserted: seq {} after {} ({CHAIN})",
                rec.seq, self.last_seq
            ),
        )
    }

    fn finish(mut self, first_file: &Path) -> Result<VerifyReport, VerifyFailure> {
        if self.prev.is_none() {
            return Err(failure(first_file, 0, "no audit records"));
        }
        self.report.last_seq = self.last_seq;
        self.report.unsigned_tail = self.unsigned;
        let (last_file, last_line) = self.last_loc.clone();
        let anchors_path = self.opts.anchors.clone().unwrap_or_default();
        let mut early = 0;
        for (&seq, anchor) in &self.anchors {
            if seq < self.report.first_seq {
                early += 1;
                continue;
            }
            if seq <= self.last_seq {
                continue;
            }
            let ok = record::parse_line(&anchor.bytes)
                .ok()
                .and_then(|p| {
                    let body: CheckpointBody = parse_body(p.inner)?;
                    let key = self.key.clone().or_else(|| hex::decode(&body.key).ok())?;
                    Some(signature_ok(&key, seq, p.ts, &body.head, &body.sig))
                })
                .unwrap_or(false);
            if !ok {
                return Err(failure(
                    &anchors_path,
                    anchor.line,
                    "anchor checkpoint signature is invalid",
                ));
            }
            return Err(failure(
                &last_file,
                last_line + 1,
                format!(
                    "log truncated: records {}..{seq} missing (anchor {}:{} holds checkpoint {seq}, the log ends at {})",
                    self.last_seq + 1,
                    anchors_path.display(),
                    anchor.line,
                    self.last_seq
                ),
            ));
        }
        if early > 0 {
            self.report.warnings.push(format!(
                "{early} anchor(s) predate the first supplied record and were not checked"
            ));
        }
        if self.opts.strict && self.unsigned > 0 {
            let (file, line) = self
                .first_unsigned
                .clone()
                .unwrap_or((last_file, last_line));
            return Err(failure(
                &file,
                line,
                format!(
                    "{} record(s) from here on follow the last checkpoint and are not signed (strict)",
                    self.unsigned
                ),
            ));
        }
        if self.report.checkpoints == 0 {
            self.report
                .warnings
                .push("no checkpoints: nothing in these files is signed".into());
        } else if self.opts.key.is_none() {
            self.report.warnings.push(format!(
                "no key pinned: trusted the key named in the first checkpoint ({}); pin it to detect a log re-signed with another key",
                self.report.key_hex.as_deref().unwrap_or("?")
            ));
        }
        Ok(self.report)
    }
}

/// A v2 signature (over seq, timestamp and head), or a v1 one (seq and
/// head) from a log written before v2. A v2 signature never verifies as v1,
/// so an edited timestamp cannot fall back to the weaker form.
fn signature_ok(key: &[u8], seq: u64, ts: &[u8], head_hex: &str, sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else {
        return false;
    };
    let key = UnparsedPublicKey::new(&ED25519, key);
    key.verify(&record::checkpoint_message(seq, ts, head_hex), &sig)
        .is_ok()
        || key
            .verify(&record::checkpoint_message_v1(seq, head_hex), &sig)
            .is_ok()
}

/// The `seq` of the next line, if it parses (only used to refine a diagnosis).
fn peek_seq(reader: &mut impl BufRead) -> Option<u64> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).ok()?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    record::parse_line(&line).ok().map(|p| p.seq)
}
