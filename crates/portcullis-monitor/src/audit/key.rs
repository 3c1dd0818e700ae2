//! The gateway's Ed25519 checkpoint-signing key.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::AuditError;

/// A loaded signing key and its public half in hex.
pub(crate) struct SigningKey {
    /// The key pair.
    pub pair: Ed25519KeyPair,
    /// The public key, lowercase hex.
    pub public_hex: String,
}

/// `<key_path>.pub`.
pub(crate) fn pub_path(key_path: &Path) -> PathBuf {
    let mut s: OsString = key_path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Loads the PKCS#8 key at `path`, creating it (mode 0600) if missing, and
/// makes sure `<path>.pub` holds its public key.
pub(crate) fn load_or_create(path: &Path) -> Result<SigningKey, AuditError> {
    let key_err = |reason: String| AuditError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let pair = match fs::read(path) {
        Ok(bytes) => {
            if let Ok(meta) = fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "audit signing key is readable by group or others");
                }
            }
            Ed25519KeyPair::from_pkcs8(&bytes)
                .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&bytes))
                .map_err(|e| key_err(format!("not an Ed25519 PKCS#8 (DER) key: {e}")))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| key_err("cannot generate a key".into()))?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| key_err(format!("cannot create: {e}")))?;
            file.write_all(doc.as_ref())
                .and_then(|()| file.sync_all())
                .map_err(|e| key_err(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), "created audit signing key");
            Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|e| key_err(format!("generated key unusable: {e}")))?
        }
        Err(e) => return Err(key_err(format!("cannot read: {e}"))),
    };
    let public_hex = hex::encode(pair.public_key().as_ref());
    let pub_file = pub_path(path);
    let wanted = format!("{public_hex}\n");
    if fs::read_to_string(&pub_file).ok().as_deref() != Some(wanted.as_str()) {
        fs::write(&pub_file, wanted).map_err(|e| AuditError::Key {
            path: pub_file.clone(),
            reason: format!("cannot write public key: {e}"),
        })?;
    }
    Ok(SigningKey { pair, public_hex })
}

/// Reads a hex public key (as written to `<key_path>.pub`) so `verify` can pin it.
pub fn load_public_key(path: &Path) -> Result<Vec<u8>, AuditError> {
    let text = fs::read_to_string(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = hex::decode(text.trim()).map_err(|e| AuditError::Key {
        path: path.to_path_buf(),
        reason: format!("not hex: {e}"),
    })?;
    if bytes.len() != 32 {
        return Err(AuditError::Key {
            path: path.to_path_buf(),
            reason: format!(
                "expected a 32-byte Ed25519 public key, got {} bytes",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}
