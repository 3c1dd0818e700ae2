//! `portcullis audit tail`: filter records and follow the live file across rotations.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::files::rotated_predecessors;

/// How often [`follow`] polls for new data.
const POLL: Duration = Duration::from_millis(200);

/// Which records to show; every field set must match (all `None` shows everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailFilter {
    /// Substring of `identity.key`, `identity.agent`, `identity.user` or `identity.device` (or of `identity` if it is a string).
    pub identity: Option<String>,
    /// Exact `decision` (ASCII case-insensitive).
    pub decision: Option<String>,
    /// Exact `tool`.
    pub tool: Option<String>,
    /// Exact `kind`.
    pub kind: Option<String>,
}

impl TailFilter {
    /// Whether no criterion is set, so lines need not be parsed.
    pub fn is_empty(&self) -> bool {
        self.identity.is_none()
            && self.decision.is_none()
            && self.tool.is_none()
            && self.kind.is_none()
    }

    /// Whether `record` passes every criterion that is set.
    pub fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name).and_then(Value::as_str);
        if let Some(kind) = &self.kind {
            if field("kind") != Some(kind.as_str()) {
                return false;
            }
        }
        if let Some(tool) = &self.tool {
            if field("tool") != Some(tool.as_str()) {
                return false;
            }
        }
        if let Some(decision) = &self.decision {
            if !field("decision").is_some_and(|d| d.eq_ignore_ascii_case(decision)) {
                return false;
            }
        }
        if let Some(wanted) = &self.identity {
            let hit = match record.get("identity") {
                Some(Value::String(s)) => s.contains(wanted.as_str()),
                Some(Value::Object(map)) => ["key", "agent", "user", "device"]
                    .iter()
                    .filter_map(|k| map.get(*k).and_then(Value::as_str))
                    .any(|s| s.contains(wanted.as_str())),
                _ => false,
            };
            if !hit {
                return false;
            }
        }
        true
    }

    /// Whether a raw line passes (lines that are not JSON pass only an empty filter).
    fn matches_line(&self, line: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        serde_json::from_str::<Value>(line).is_ok_and(|v| self.matches(&v))
    }
}

/// Streams matching lines of the live log at `path` to `sink` (without the
/// newline), from the start or only new ones, following appends and
/// rotations by polling every 200 ms, until `sink` returns `false`. Blocks:
/// run it on its own thread or in `spawn_blocking`.
pub fn follow(
    path: &Path,
    from_end: bool,
    filter: &TailFilter,
    mut sink: impl FnMut(&str) -> bool,
) -> io::Result<()> {
    let mut file = open_waiting(path)?;
    let mut ino = file.metadata()?.ino();
    let mut pos = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut skip_partial = false;
    if from_end {
        pos = file.seek(SeekFrom::End(0))?;
        if pos > 0 {
            file.seek(SeekFrom::Start(pos - 1))?;
            let mut last = [0u8; 1];
            file.read_exact(&mut last)?;
            skip_partial = last != [b'\n'];
        }
    }
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n > 0 {
            pos += n as u64;
            pending.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if !emit(&mut pending, &mut skip_partial, filter, &mut sink) {
                return Ok(());
            }
            continue;
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.ino() != ino => {
                // Rotated: drain what was written to the old file before the
                // rename, then any files rotated since (several rotations may
                // fit in one poll interval), then follow the new live file.
                drain(&mut file, &mut pending, &mut chunk)?;
                if !emit(&mut pending, &mut skip_partial, filter, &mut sink) {
                    return Ok(());
                }
                pending.clear();
                for missed in rotated_after(path, ino) {
                    let Ok(mut f) = File::open(&missed) else {
                        continue;
                    };
                    drain(&mut f, &mut pending, &mut chunk)?;
                    if !emit(&mut pending, &mut skip_partial, filter, &mut sink) {
                        return Ok(());
                    }
                    pending.clear();
                }
                file = open_waiting(path)?;
                ino = file.metadata()?.ino();
                pos = 0;
            }
            Ok(meta) if meta.len() < pos => {
                file.seek(SeekFrom::Start(0))?;
                pending.clear();
                pos = 0;
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

/// Sends every complete line in `pending` to `sink`; false once `sink` says stop.
fn emit(
    pending: &mut Vec<u8>,
    skip_partial: &mut bool,
    filter: &TailFilter,
    sink: &mut impl FnMut(&str) -> bool,
) -> bool {
    let mut start = 0;
    let mut keep_going = true;
    while let Some(off) = pending
        .get(start..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let end = start + off;
        let line = pending.get(start..end).unwrap_or_default();
        start = end + 1;
        if std::mem::take(skip_partial) {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if filter.matches_line(&text) && !sink(&text) {
            keep_going = false;
            break;
        }
    }
    pending.drain(..start);
    keep_going
}

/// Reads `file` to its end into `pending`.
fn drain(file: &mut File, pending: &mut Vec<u8>, chunk: &mut [u8]) -> io::Result<()> {
    loop {
        let n = file.read(chunk)?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Rotated files newer than the one with inode `ino` (empty if it is not found).
fn rotated_after(live: &Path, ino: u64) -> Vec<PathBuf> {
    let Ok(rotated) = rotated_predecessors(live) else {
        return Vec::new();
    };
    let position = rotated
        .iter()
        .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino));
    match position {
        Some(i) => rotated.into_iter().skip(i + 1).collect(),
        None => Vec::new(),
    }
}

fn open_waiting(path: &Path) -> io::Result<File> {
    loop {
        match File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::thread::sleep(POLL),
            Err(e) => return Err(e),
        }
    }
}
