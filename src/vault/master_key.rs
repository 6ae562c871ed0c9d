//! Where the master key comes from: `SEKS_MASTER_KEY`, a key file, or a key file made on first run.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::VaultError;
use super::crypto::{KEY_LEN, Key};

/// Environment variable holding the master key as base64 of 32 bytes.
pub const MASTER_KEY_ENV: &str = "SEKS_MASTER_KEY";
/// Environment variable holding the key `seks key rotate` moves the store to.
pub const NEW_MASTER_KEY_ENV: &str = "SEKS_NEW_MASTER_KEY";

/// Where the master key in use was found, so the operator can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// From the `SEKS_MASTER_KEY` environment variable.
    Environment,
    /// From an existing key file.
    File(PathBuf),
    /// Generated just now into this key file.
    Generated(PathBuf),
}

/// Load the master key from the environment value (variable name, value) if set, else
/// from `key_file`, else generate `key_file` (mode 0600) when `may_generate` is true.
pub fn load(
    env: Option<(&str, SecretString)>,
    key_file: &Path,
    may_generate: bool,
) -> Result<(Key, KeySource), VaultError> {
    if let Some((name, value)) = env {
        let key = decode(value.expose_secret()).map_err(|why| VaultError::BadMasterKey {
            origin: name.to_owned(),
            why,
        })?;
        return Ok((key, KeySource::Environment));
    }
    let io_err = |source| VaultError::KeyFile {
        path: key_file.to_owned(),
        source,
    };
    match fs::File::open(key_file) {
        Ok(mut file) => {
            // Like ssh with private keys: a key others can read is refused, not used.
            if file.metadata().map_err(io_err)?.permissions().mode() & 0o077 != 0 {
                return Err(VaultError::KeyFileTooOpen {
                    path: key_file.to_owned(),
                });
            }
            let mut text = Zeroizing::new(String::new());
            file.read_to_string(&mut text).map_err(io_err)?;
            let key = decode(&text).map_err(|why| VaultError::BadMasterKey {
                origin: key_file.display().to_string(),
                why,
            })?;
            Ok((key, KeySource::File(key_file.to_owned())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_generate => {
            let key = Key::random();
            write_key_file(key_file, &key)?;
            Ok((key, KeySource::Generated(key_file.to_owned())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VaultError::NoMasterKey {
            path: key_file.to_owned(),
        }),
        Err(source) => Err(io_err(source)),
    }
}

/// Where `seks key rotate` puts a new key before it replaces `key_file`.
pub fn pending_file(key_file: &Path) -> std::path::PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".next");
    name.into()
}

fn decode(text: &str) -> Result<Key, &'static str> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| "not valid base64")?,
    );
    let array: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| "must be base64 of exactly 32 bytes")?;
    Ok(Key::from_bytes(array))
}

fn write_key_file(path: &Path, key: &Key) -> Result<(), VaultError> {
    let io_err = |source| VaultError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let encoded = Zeroizing::new(format!("{}\n", STANDARD.encode(key.expose())));
    file.write_all(encoded.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    sync_parent(path).map_err(io_err)
}

/// Make the directory entry of `path` (just created or renamed) survive a power cut: a
/// store may be committed to the key in it moments later.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_mode_0600_then_reads_back_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (first, source) = load(None, &path, true).unwrap();
        assert_eq!(source, KeySource::Generated(path.clone()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (second, source) = load(None, &path, true).unwrap();
        assert_eq!(source, KeySource::File(path.clone()));
        assert_eq!(first.expose(), second.expose());
    }

    #[test]
    fn environment_wins_and_bad_values_are_named_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let env = SecretString::from(STANDARD.encode([9u8; 32]));
        let (key, source) = load(Some((MASTER_KEY_ENV, env)), &path, true).unwrap();
        assert_eq!(source, KeySource::Environment);
        assert_eq!(key.expose(), &[9u8; 32]);
        assert!(!path.exists());

        let short = SecretString::from("c2hvcnQ=".to_owned());
        let err = load(Some((MASTER_KEY_ENV, short)), &path, true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(MASTER_KEY_ENV) && !msg.contains("c2hvcnQ="),
            "{msg}"
        );
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        load(None, &path, true).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(None, &path, true),
            Err(VaultError::KeyFileTooOpen { .. })
        ));
    }

    #[test]
    fn missing_key_file_is_an_error_when_generation_is_not_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(None, &dir.path().join("none.key"), false).unwrap_err();
        assert!(matches!(err, VaultError::NoMasterKey { .. }));
    }
}
