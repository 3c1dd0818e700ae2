//! Where Portcullis keeps state (the dev CA, issued dev credentials).
//!
//! `$PORTCULLIS_STATE_DIR`, else `$XDG_STATE_HOME/portcullis`, else
//! `$HOME/.local/state/portcullis`. Empty values count as unset, and a
//! relative `XDG_STATE_HOME` is ignored (XDG Base Directory spec).

use std::ffi::OsString;
use std::path::PathBuf;

/// No state folder could be derived from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no state folder: set PORTCULLIS_STATE_DIR (or XDG_STATE_HOME or HOME)")]
pub struct NoStateDir;

/// The state folder, so every command finds the same dev CA.
pub fn state_dir() -> Result<PathBuf, NoStateDir> {
    state_dir_from(|k| std::env::var_os(k))
}

/// The default CA folder: `state_dir()/ca`, used when `--ca`/`--dir` is absent.
pub fn default_ca_dir() -> Result<PathBuf, NoStateDir> {
    state_dir().map(|d| d.join("ca"))
}

/// [`state_dir`] with an injected environment, so it can be tested without
/// mutating the process environment.
pub fn state_dir_from(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, NoStateDir> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = get("PORTCULLIS_STATE_DIR") {
        return Ok(d);
    }
    if let Some(d) = get("XDG_STATE_HOME").filter(|d| d.is_absolute()) {
        return Ok(d.join("portcullis"));
    }
    if let Some(h) = get("HOME") {
        return Ok(h.join(".local").join("state").join("portcullis"));
    }
    Err(NoStateDir)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<PathBuf, NoStateDir> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        state_dir_from(move |k| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn precedence() {
        let all = [
            ("PORTCULLIS_STATE_DIR", "/p"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(with(&all).unwrap(), PathBuf::from("/p"));
        assert_eq!(with(&all[1..]).unwrap(), PathBuf::from("/x/portcullis"));
        assert_eq!(
            with(&all[2..]).unwrap(),
            PathBuf::from("/h/.local/state/portcullis")
        );
        assert_eq!(with(&[]), Err(NoStateDir));
    }

    #[test]
    fn empty_and_relative_values_are_skipped() {
        assert_eq!(
            with(&[
                ("PORTCULLIS_STATE_DIR", ""),
                ("XDG_STATE_HOME", "rel/dir"),
                ("HOME", "/h")
            ])
            .unwrap(),
            PathBuf::from("/h/.local/state/portcullis")
        );
        assert_eq!(
            with(&[("PORTCULLIS_STATE_DIR", "relative/ok")]).unwrap(),
            PathBuf::from("relative/ok")
        );
    }
}
