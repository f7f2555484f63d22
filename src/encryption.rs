//! Encryption with age, to keys the user holds: the stored file is a standard age file, so
//! `age -d -i key.txt FILE | gunzip` (or `zstd -d`) gives the dump back without dbkeep.
//!
//! - Recipients (`BACKUP_ENCRYPT_RECIPIENTS`): X25519 public keys (`age1…`) and SSH public keys
//!   (`ssh-ed25519 …`, `ssh-rsa …`), separated by commas or new lines; or a passphrase read from
//!   `BACKUP_ENCRYPT_PASSPHRASE_FILE` (scrypt).
//! - Identities for verify and restore: `BACKUP_DECRYPT_IDENTITY_FILE` (an age identity file, or
//!   an unencrypted SSH private key), or the passphrase file.
//! - Fail closed: an invalid recipient is a configuration error before anything is written.
//!
//! Compress, then encrypt; the manifest's SHA-256 covers the encrypted bytes, so `verify` without
//! a key still detects corruption.

use age::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    #[default]
    None,
    Age,
}

impl Encryption {
    pub fn suffix(self) -> &'static str {
        match self {
            Encryption::None => "",
            Encryption::Age => ".age",
        }
    }
}

#[derive(Debug, Error)]
pub enum EncryptionError {
    #[error(
        "BACKUP_ENCRYPT_RECIPIENTS entry {index} ({shown:?}) is not an age recipient (age1…) or an SSH public key (ssh-ed25519 / ssh-rsa): nothing was written"
    )]
    BadRecipient { index: usize, shown: String },
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} holds no usable identity (age secret keys or an unencrypted SSH private key)")]
    NoIdentity { path: PathBuf },
    #[error("the passphrase file {0} is empty")]
    EmptyPassphrase(PathBuf),
    #[error(
        "the backup is encrypted: set BACKUP_DECRYPT_IDENTITY_FILE (or BACKUP_ENCRYPT_PASSPHRASE_FILE) to a key that can decrypt it"
    )]
    NoKey,
    #[error(
        "none of the configured keys can decrypt this backup (wrong BACKUP_DECRYPT_IDENTITY_FILE?)"
    )]
    WrongKey,
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

/// How backups are encrypted, from the settings.
pub struct Sealer {
    recipients: Vec<Box<dyn age::Recipient + Send + Sync>>,
}

/// Parses the recipients (fail closed) and the passphrase file; `None` when encryption is off.
pub fn sealer(
    recipients: Option<&str>,
    passphrase_file: Option<&Path>,
) -> Result<Option<Sealer>, EncryptionError> {
    let mut out: Vec<Box<dyn age::Recipient + Send + Sync>> = Vec::new();
    if let Some(list) = recipients {
        for (i, entry) in list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .enumerate()
        {
            let bad = || EncryptionError::BadRecipient {
                index: i + 1,
                shown: entry.chars().take(24).collect(),
            };
            if entry.starts_with("age1") {
                out.push(Box::new(
                    age::x25519::Recipient::from_str(entry).map_err(|_| bad())?,
                ));
            } else if entry.starts_with("ssh-") {
                out.push(Box::new(
                    age::ssh::Recipient::from_str(entry).map_err(|_| bad())?,
                ));
            } else {
                return Err(bad());
            }
        }
    }
    if let Some(path) = passphrase_file {
        out.push(Box::new(age::scrypt::Recipient::new(read_passphrase(
            path,
        )?)));
    }
    Ok((!out.is_empty()).then_some(Sealer { recipients: out }))
}

fn read_passphrase(path: &Path) -> Result<SecretString, EncryptionError> {
    let text = std::fs::read_to_string(path).map_err(|source| EncryptionError::Read {
        what: "the passphrase file",
        path: path.to_owned(),
        source,
    })?;
    let pass = text.trim_end_matches(['\n', '\r']).to_owned();
    if pass.is_empty() {
        return Err(EncryptionError::EmptyPassphrase(path.to_owned()));
    }
    Ok(SecretString::from(pass))
}

/// A writer that encrypts when a sealer is configured; `finish` completes the age stream.
pub enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    pub fn new(sealer: Option<&Sealer>, inner: W) -> Result<Self, EncryptionError> {
        let Some(s) = sealer else {
            return Ok(Sealed::Plain(inner));
        };
        let enc = age::Encryptor::with_recipients(
            s.recipients
                .iter()
                .map(|r| r.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| EncryptionError::Encrypt(e.to_string()))?;
        Ok(Sealed::Age(
            enc.wrap_output(inner)
                .map_err(|e| EncryptionError::Encrypt(e.to_string()))?,
        ))
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Sealed::Age(a) => a.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(a) => a.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(a) => a.flush(),
        }
    }
}

/// The keys that can open backups.
pub struct Keys {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

/// Loads the identity file and/or the passphrase file; `None` when neither is configured.
pub fn keys(
    identity_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<Option<Keys>, EncryptionError> {
    let mut identities: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    if let Some(path) = identity_file {
        let text = std::fs::read(path).map_err(|source| EncryptionError::Read {
            what: "the identity file",
            path: path.to_owned(),
            source,
        })?;
        let from_age = age::IdentityFile::from_buffer(&text[..])
            .ok()
            .and_then(|f| f.into_identities().ok())
            .filter(|ids| !ids.is_empty());
        match from_age {
            Some(ids) => identities.extend(ids),
            None => match age::ssh::Identity::from_buffer(&text[..], None) {
                Ok(id @ age::ssh::Identity::Unencrypted(_)) => identities.push(Box::new(id)),
                _ => {
                    return Err(EncryptionError::NoIdentity {
                        path: path.to_owned(),
                    });
                }
            },
        }
    }
    if let Some(path) = passphrase_file {
        identities.push(Box::new(age::scrypt::Identity::new(read_passphrase(path)?)));
    }
    Ok((!identities.is_empty()).then_some(Keys { identities }))
}

/// Opens an encrypted stream.
pub fn open<'a, R: Read + 'a>(
    keys: Option<&Keys>,
    inner: R,
) -> Result<Box<dyn Read + 'a>, EncryptionError> {
    let keys = keys.ok_or(EncryptionError::NoKey)?;
    let dec = age::Decryptor::new(inner).map_err(|e| EncryptionError::Decrypt(e.to_string()))?;
    let reader = dec
        .decrypt(
            keys.identities
                .iter()
                .map(|i| i.as_ref() as &dyn age::Identity),
        )
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => EncryptionError::WrongKey,
            e => EncryptionError::Decrypt(e.to_string()),
        })?;
    Ok(Box::new(reader))
}

/// A new X25519 identity: (the identity file's text, the public key).
pub fn generate() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {public}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        id.to_string().expose_secret()
    );
    (text, public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let (text, public) = generate();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        std::fs::write(&key, &text).unwrap();
        let s = sealer(Some(&public), None).unwrap().unwrap();
        let mut w = Sealed::new(Some(&s), Vec::new()).unwrap();
        w.write_all(b"secret dump").unwrap();
        let stored = w.finish().unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1"));
        let k = keys(Some(&key), None).unwrap().unwrap();
        let mut out = String::new();
        open(Some(&k), &stored[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "secret dump");
        let (other, _) = generate();
        let other_key = dir.path().join("other.txt");
        std::fs::write(&other_key, other).unwrap();
        let k2 = keys(Some(&other_key), None).unwrap().unwrap();
        assert!(matches!(
            open(Some(&k2), &stored[..]),
            Err(EncryptionError::WrongKey)
        ));
        assert!(matches!(
            open(None, &stored[..]),
            Err(EncryptionError::NoKey)
        ));
    }

    #[test]
    fn bad_recipients_fail_closed() {
        for bad in ["age1notakey", "hello", "ssh-ed25519 AAAAnot-base64"] {
            let e = sealer(Some(bad), None).err().unwrap().to_string();
            assert!(
                e.contains("entry 1") && e.contains("nothing was written"),
                "{e}"
            );
        }
        assert!(sealer(None, None).unwrap().is_none());
    }

    #[test]
    fn passphrase_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "correct horse battery staple\n").unwrap();
        let s = sealer(None, Some(&pass)).unwrap().unwrap();
        let mut w = Sealed::new(Some(&s), Vec::new()).unwrap();
        w.write_all(b"x").unwrap();
        let stored = w.finish().unwrap();
        let k = keys(None, Some(&pass)).unwrap().unwrap();
        let mut out = Vec::new();
        open(Some(&k), &stored[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"x");
    }
}
