//! From a remote's URL to an object store and the prefix inside it.
//!
//! - a plain path or `file:///path`: a directory (created if missing);
//! - `s3://bucket/prefix`: S3 or an S3-compatible server. Credentials,
//!   region and endpoint come from the environment (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//!   `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...) and, for what the
//!   environment leaves out, from the profile (`AWS_PROFILE`, else
//!   `default`) in `~/.aws/credentials` and `~/.aws/config` (or
//!   `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`), as the AWS tools do;
//! - `gs://bucket/prefix`: Google Cloud Storage (`GOOGLE_SERVICE_ACCOUNT`,
//!   `GOOGLE_APPLICATION_CREDENTIALS`, ...);
//! - `az://container/prefix`, `abfs://...`, `https://ACCOUNT.blob.core.windows.net/...`:
//!   Azure Blob Storage (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...).

use super::RemoteError;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An opened remote: the object store and where under it entries live.
pub struct Location {
    pub objects: Arc<dyn ObjectStore>,
    pub prefix: ObjectPath,
    /// What messages call it: the URL, or the directory's absolute path.
    pub display: String,
    /// The folder, when the remote is a directory: files are copied into
    /// it by the kernel rather than streamed through memory.
    pub directory: Option<PathBuf>,
}

const SCHEMES: &str = "a directory, file://, s3://, gs://, az:// (or abfs://, https://ACCOUNT.blob.core.windows.net/)";

pub fn open(url: &str) -> Result<Location, RemoteError> {
    let invalid = |message: String| RemoteError::Url {
        url: url.to_string(),
        message,
    };
    if url.trim().is_empty() {
        return Err(invalid("empty; give a directory or a URL".into()));
    }
    if !url.contains("://") {
        return directory(Path::new(url), url);
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    let (scheme, prefix) = object_store::ObjectStoreScheme::parse(&parsed)
        .map_err(|_| invalid(format!("unsupported URL; use {SCHEMES}")))?;
    let store_error = |e: object_store::Error| invalid(e.to_string());
    let objects: Arc<dyn ObjectStore> = match scheme {
        object_store::ObjectStoreScheme::Local => {
            return directory(Path::new(parsed.path()), url);
        }
        object_store::ObjectStoreScheme::AmazonS3 => {
            let mut builder = AmazonS3Builder::from_env().with_url(url);
            let env = |name: &str| std::env::var(name).ok();
            for (key, value) in aws_profile_settings(&env, &home()) {
                // The environment comes first: a profile value only fills
                // what `from_env` left unset.
                if builder.get_config_value(&key).is_none() {
                    builder = builder.with_config(key, value);
                }
            }
            Arc::new(builder.build().map_err(store_error)?)
        }
        object_store::ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(store_error)?,
        ),
        object_store::ObjectStoreScheme::MicrosoftAzure => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(store_error)?,
        ),
        _ => return Err(invalid(format!("unsupported URL; use {SCHEMES}"))),
    };
    Ok(Location {
        objects,
        prefix,
        display: url.to_string(),
        directory: None,
    })
}

fn directory(dir: &Path, url: &str) -> Result<Location, RemoteError> {
    std::fs::create_dir_all(dir).map_err(|e| RemoteError::Url {
        url: url.to_string(),
        message: format!("cannot create the directory {}: {e}", dir.display()),
    })?;
    let objects = LocalFileSystem::new_with_prefix(dir).map_err(|e| RemoteError::Url {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok(Location {
        objects: Arc::new(objects),
        prefix: ObjectPath::default(),
        display: absolute.display().to_string(),
        directory: Some(absolute),
    })
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The S3 settings of the AWS profile in effect, from the shared
/// credentials and config files. `env` reads an environment variable (a
/// parameter so that tests need not change the process's environment).
fn aws_profile_settings(
    env: &dyn Fn(&str) -> Option<String>,
    home: &Option<PathBuf>,
) -> Vec<(AmazonS3ConfigKey, String)> {
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let file = |var: &str, default: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let read = |path: Option<PathBuf>| {
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| ini_sections(&text))
            .unwrap_or_default()
    };
    let credentials = read(file("AWS_SHARED_CREDENTIALS_FILE", "credentials"));
    let config = read(file("AWS_CONFIG_FILE", "config"));
    // The config file names sections `[profile NAME]`, except `[default]`.
    let config_section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let mut settings = BTreeMap::new();
    for section in [config.get(&config_section), credentials.get(&profile)]
        .into_iter()
        .flatten()
    {
        // Later sections (the credentials file) win, as in the AWS tools.
        settings.extend(section.clone());
    }
    let mut out = Vec::new();
    for (name, key) in [
        ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
        ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
        ("aws_session_token", AmazonS3ConfigKey::Token),
        ("region", AmazonS3ConfigKey::Region),
        ("endpoint_url", AmazonS3ConfigKey::Endpoint),
    ] {
        if let Some(value) = settings.get(name) {
            out.push((key, value.clone()));
        }
    }
    out
}

/// `[section]` headers and `key = value` lines; `#` and `;` start comments.
fn ini_sections(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        if let (Some(section), Some((key, value))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(key.trim().to_lowercase(), value.trim().to_string());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_comes_from_both_files_and_credentials_win() {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             [team]\n# a comment\naws_access_key_id=T\naws_secret_access_key = TS\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = eu-west-1\n[profile team]\nregion = us-east-2\n\
             endpoint_url = http://127.0.0.1:9000\naws_access_key_id = ignored\n",
        )
        .unwrap();
        let home = Some(dir.path().to_path_buf());
        let none = |_: &str| None;
        let default: BTreeMap<String, String> = aws_profile_settings(&none, &home)
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v))
            .collect();
        assert_eq!(default["aws_access_key_id"], "D");
        assert_eq!(default["aws_region"], "eu-west-1");
        assert!(!default.contains_key("aws_endpoint"));

        let team = |name: &str| (name == "AWS_PROFILE").then(|| "team".to_string());
        let team: BTreeMap<String, String> = aws_profile_settings(&team, &home)
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v))
            .collect();
        assert_eq!(team["aws_access_key_id"], "T");
        assert_eq!(team["aws_secret_access_key"], "TS");
        assert_eq!(team["aws_region"], "us-east-2");
        assert_eq!(team["aws_endpoint"], "http://127.0.0.1:9000");
    }

    #[test]
    fn other_files_can_be_named_and_missing_files_give_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(&creds, "[default]\naws_access_key_id = X\n").unwrap();
        let creds_text = creds.to_string_lossy().into_owned();
        let env = |name: &str| (name == "AWS_SHARED_CREDENTIALS_FILE").then(|| creds_text.clone());
        let settings = aws_profile_settings(&env, &None);
        assert_eq!(settings.len(), 1);
        assert_eq!(settings[0].1, "X");
        assert!(aws_profile_settings(&|_| None, &None).is_empty());
    }

    #[test]
    fn unsupported_urls_say_what_is_supported() {
        for url in ["ftp://host/x", "", "http://example/x"] {
            let Err(e) = open(url) else {
                panic!("{url} opened")
            };
            assert!(matches!(e, RemoteError::Url { .. }), "{url}: {e}");
        }
    }
}
