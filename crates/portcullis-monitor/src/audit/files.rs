//! File helpers shared by the writer and the verifier: rotated names and tail reads.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Digits of the rotated-file suffix.
const SUFFIX_DIGITS: usize = 12;

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `<live>.<first_seq padded to 12 digits>`.
pub(crate) fn rotated_name(live: &Path, first_seq: u64) -> PathBuf {
    let mut name = live.as_os_str().to_owned();
    name.push(format!(".{first_seq:0SUFFIX_DIGITS$}"));
    PathBuf::from(name)
}

/// The live file's rotated predecessors plus itself (if it exists), oldest
/// first, so "verify everything" is one call.
pub fn rotated_files(live: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = rotated_predecessors(live)?;
    if live.exists() {
        files.push(live.to_path_buf());
    }
    if files.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no audit log at {}", live.display()),
        ));
    }
    Ok(files)
}

/// Rotated predecessors of `live`, oldest first (sorted by the numeric suffix).
pub(crate) fn rotated_predecessors(live: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = parent_dir(live);
    let Some(name) = live.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", live.display()),
        ));
    };
    let mut prefix: OsString = name.to_owned();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes().to_vec();
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(suffix) = file_name.as_encoded_bytes().strip_prefix(prefix.as_slice()) else {
            continue;
        };
        if suffix.len() < SUFFIX_DIGITS || !suffix.iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Some(seq) = std::str::from_utf8(suffix)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, dir.join(&file_name)));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// `fsync` a directory so a create or rename in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The end of a log file: its last complete line and any partial line after it.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// The last newline-terminated line, without the newline.
    pub last_line: Option<Vec<u8>>,
    /// Bytes after the last newline: (offset, bytes).
    pub partial: Option<(u64, Vec<u8>)>,
}

/// Reads only the end of a file of length `len` (growing the window until it
/// holds a whole line).
pub(crate) fn read_tail(file: &mut File, len: u64) -> io::Result<Tail> {
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.by_ref().take(len - start).read_to_end(&mut buf)?;
        let last_nl = buf.iter().rposition(|&b| b == b'\n');
        let Some(nl) = last_nl else {
            if start == 0 {
                let partial = (!buf.is_empty()).then_some((0, buf));
                return Ok(Tail {
                    last_line: None,
                    partial,
                });
            }
            window = window.saturating_mul(2);
            continue;
        };
        let before = buf.get(..nl).unwrap_or_default();
        let line_start = match before.iter().rposition(|&b| b == b'\n') {
            Some(p) => p + 1,
            None if start == 0 => 0,
            None => {
                window = window.saturating_mul(2);
                continue;
            }
        };
        let partial_bytes = buf.get(nl + 1..).unwrap_or_default();
        let partial =
            (!partial_bytes.is_empty()).then(|| (start + nl as u64 + 1, partial_bytes.to_vec()));
        let last_line = buf.get(line_start..nl).map(<[u8]>::to_vec);
        return Ok(Tail { last_line, partial });
    }
}

/// Reads the first line of a file (without newline), if it has a complete one.
pub(crate) fn read_first_line(file: &mut File) -> io::Result<Option<Vec<u8>>> {
    file.seek(SeekFrom::Start(0))?;
    let mut line = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        let got = chunk.get(..n).unwrap_or_default();
        if let Some(p) = got.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(got.get(..p).unwrap_or_default());
            return Ok(Some(line));
        }
        line.extend_from_slice(got);
    }
}
