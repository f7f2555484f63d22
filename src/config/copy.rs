//! The repositories each backup is also copied to (`[[copy_to]]`, `BACKUP_COPY_TO`).

use super::*;
use crate::database_url::Secret;
use crate::storage::S3Settings;

/// A repository backups are copied to.
#[derive(Debug, Clone, Default)]
pub struct CopyTarget {
    pub location: String,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
}

impl CopyTarget {
    pub fn new(location: &str) -> Self {
        Self {
            location: location.trim().trim_end_matches('/').to_owned(),
            ..Self::default()
        }
    }

    /// Its S3 settings: its own where given, else the primary's (`base`).
    pub fn s3(&self, base: &S3Settings) -> S3Settings {
        let own_keys = self.access_key_id.is_some();
        S3Settings {
            endpoint: self.endpoint.clone().or_else(|| base.endpoint.clone()),
            region: self.region.clone().or_else(|| base.region.clone()),
            path_style: self.path_style.or(base.path_style),
            access_key_id: self
                .access_key_id
                .clone()
                .or_else(|| base.access_key_id.clone()),
            secret_access_key: if own_keys {
                self.secret_access_key.clone()
            } else {
                base.secret_access_key.clone()
            },
            session_token: if own_keys {
                self.session_token.clone()
            } else {
                base.session_token.clone()
            },
            ..base.clone()
        }
    }
}

impl From<CopyToLayer> for CopyTarget {
    fn from(l: CopyToLayer) -> Self {
        Self {
            endpoint: l.s3_endpoint,
            region: l.s3_region,
            path_style: l.s3_path_style,
            access_key_id: l.s3_access_key_id,
            secret_access_key: l.s3_secret_access_key.map(Secret::new),
            session_token: l.s3_session_token.map(Secret::new),
            ..CopyTarget::new(&l.url)
        }
    }
}
