//! Bearer tokens: `DBKEEP_API_TOKEN` (named `default`) and `DBKEEP_API_TOKENS_FILE` (several named
//! tokens, one `NAME TOKEN` or `NAME:TOKEN` per line, `#` comments). Tokens are kept only as
//! SHA-256 digests and compared in constant time; a token's name goes to the audit log, the token
//! never.

use crate::config::ApiSettings;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "DBKEEP_API_TOKEN is {0}: a token needs 16 characters or more (e.g. head -c 24 /dev/urandom | base64)"
    )]
    WeakToken(&'static str),
    #[error("the tokens file {path}, line {line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: &'static str,
    },
}

/// The fewest characters of any token, however it is configured.
const MIN_TOKEN_CHARS: usize = 16;

/// The configured tokens.
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    pub fn load(api: &ApiSettings) -> Result<Self, AuthError> {
        let mut entries = Vec::new();
        if let Some(t) = &api.token {
            let token = t.expose().trim();
            if token.is_empty() {
                return Err(AuthError::WeakToken("empty"));
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(AuthError::WeakToken("shorter than 16 characters"));
            }
            entries.push(("default".to_owned(), digest(token)));
        }
        if let Some(path) = &api.tokens_file {
            entries.extend(read_file(path)?);
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name of the token `presented`, if it is one of ours. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let d = digest(presented);
        let mut found = None;
        for (name, want) in &self.entries {
            if bool::from(want.ct_eq(&d)) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, [u8; 32])>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |problem| AuthError::Line {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let (name, token) = line
            .split_once(|c: char| c == ':' || c.is_whitespace())
            .ok_or_else(|| err("expected NAME TOKEN (or NAME:TOKEN)"))?;
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() || token.is_empty() {
            return Err(err("expected NAME TOKEN (or NAME:TOKEN)"));
        }
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(err("the token is shorter than 16 characters"));
        }
        out.push((name.to_owned(), digest(token)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database_url::Secret;

    #[test]
    fn named_tokens_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# ops team\nalice:aaaaaaaaaaaaaaaaaaaa\nbob bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let api = ApiSettings {
            token: Some(Secret::new("cccccccccccccccccccc")),
            tokens_file: Some(file),
            ..ApiSettings::default()
        };
        let t = Tokens::load(&api).unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa"), Some("alice"));
        assert_eq!(t.check("bbbbbbbbbbbbbbbbbbbb"), Some("bob"));
        assert_eq!(t.check("cccccccccccccccccccc"), Some("default"));
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(t.check(""), None);
    }

    /// REVIEW B4: every token, however configured, has 16 characters or more; an empty one
    /// (`dbkeep_api_token = ""` in the file) is refused, not taken as a token.
    #[test]
    fn weak_and_empty_environment_tokens_are_refused() {
        for (token, said) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("s3cret-but-short", ""),
        ] {
            let api = ApiSettings {
                token: Some(Secret::new(token)),
                ..ApiSettings::default()
            };
            let loaded = Tokens::load(&api);
            if said.is_empty() {
                assert!(loaded.is_ok(), "16 characters is enough");
                continue;
            }
            let err = loaded.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(said), "{err}");
            assert!(err.contains("DBKEEP_API_TOKEN"), "{err}");
        }
        let api = ApiSettings {
            token: Some(Secret::new("fifteen-chars!!")),
            ..ApiSettings::default()
        };
        let err = Tokens::load(&api)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("shorter than 16") && !err.contains("fifteen"),
            "{err}"
        );
    }

    #[test]
    fn bad_lines_name_the_line_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "ok:aaaaaaaaaaaaaaaaaaaa\nshort:secret1\n").unwrap();
        let api = ApiSettings {
            tokens_file: Some(file),
            ..ApiSettings::default()
        };
        let err = Tokens::load(&api).err().unwrap().to_string();
        assert!(err.contains("line 2") && !err.contains("secret1"), "{err}");
    }
}
