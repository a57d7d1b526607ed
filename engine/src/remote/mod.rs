//! A remote for the store: entries pushed whole to an object store or a
//! directory, and pulled back with every output's digest verified.
//!
//! Layout under the remote's prefix:
//! - `objects/<2 hex>/<62 hex>`: output files by their blake3 digest, so a
//!   file that several entries share (a tokenizer, an unchanged model) is
//!   stored and sent once;
//! - `entries/<key>/manifest.json`: the entry's manifest, byte for byte as
//!   the local store has it.
//!
//! An entry is visible only once its manifest exists, and the manifest is
//! written after every object it names: a reader never sees half an entry.
//! Objects are written whole by the object store (an S3 PUT or a completed
//! multipart upload; a directory gets a temporary file and a rename), and
//! their names are their content, so two machines pushing the same key at
//! once write the same bytes to the same names, and whichever manifest lands
//! last is as complete as the other. Pulled files are hashed as they arrive
//! and the entry is published in the local store only when every digest
//! matches: a corrupted object never enters the store.

mod location;
mod transfer;

use crate::store::{Manifest, StageLock, Store};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Instant;

/// How many files move at once.
const PARALLEL_FILES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("invalid remote `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("remote {remote}: {source}")]
    Store {
        remote: String,
        source: object_store::Error,
    },
    #[error("remote {remote} has no entry {key}")]
    NotInRemote { remote: String, key: String },
    #[error("the local store has no entry {key}")]
    NotStored { key: String },
    #[error("remote {remote}: the manifest of entry {key} is not valid: {message}")]
    BadManifest {
        remote: String,
        key: String,
        message: String,
    },
    #[error(
        "remote {}: `{}` of entry {} is corrupted (blake3 {}, {} bytes; the manifest says {}, {} bytes); nothing was stored",
        .0.remote, .0.path, .0.key, .0.found, .0.found_size, .0.expected, .0.expected_size
    )]
    Corrupted(Box<Corruption>),
    #[error(
        "the local entry {key} no longer matches its manifest: `{path}` changed (run `distillery cache verify`); nothing was pushed"
    )]
    LocalChanged { key: String, path: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A received file that is not what the manifest says.
#[derive(Debug)]
pub struct Corruption {
    pub remote: String,
    pub key: String,
    pub path: String,
    pub expected: String,
    pub expected_size: u64,
    pub found: String,
    pub found_size: u64,
}

/// What one push or pull moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Transfer {
    /// Files sent or received.
    pub files: usize,
    pub bytes: u64,
    /// Files not sent because the remote had them already (push).
    pub skipped: usize,
    /// The whole entry was there already (in the remote for a push, in the
    /// local store for a pull): nothing moved.
    pub entry_present: bool,
    pub seconds: f64,
}

pub struct Remote {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    display: String,
    directory: Option<std::path::PathBuf>,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// Opens a remote by URL: a directory (created if missing), `file://`,
    /// `s3://`, `gs://` or `az://` (see `location` for credentials).
    pub fn open(url: &str) -> Result<Self, RemoteError> {
        let location = location::open(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(PARALLEL_FILES)
            .thread_name("distillery-remote")
            .enable_all()
            .build()?;
        Ok(Self {
            objects: location.objects,
            prefix: location.prefix,
            display: location.display,
            directory: location.directory,
            runtime,
        })
    }

    /// The remote as messages name it.
    pub fn name(&self) -> &str {
        &self.display
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.clone().join(*part);
        }
        path
    }

    fn manifest_path(&self, key: &str) -> ObjectPath {
        self.path(&["entries", key, "manifest.json"])
    }

    fn object_path(&self, blake3: &str) -> ObjectPath {
        self.path(&["objects", &blake3[..2], &blake3[2..]])
    }

    fn store_error(&self, source: object_store::Error) -> RemoteError {
        RemoteError::Store {
            remote: self.display.clone(),
            source,
        }
    }

    /// Whether the remote has the complete entry `key`.
    pub fn contains(&self, key: &str) -> Result<bool, RemoteError> {
        let head = self
            .runtime
            .block_on(self.objects.head(&self.manifest_path(key)));
        match head {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// Sends the stored entry `key`: the objects the remote lacks, then the
    /// manifest. Each file is hashed as it is read, and a file that no
    /// longer matches the local manifest stops the push before the manifest
    /// is written. An entry the remote has is skipped.
    pub fn push(&self, store: &Store, key: &str) -> Result<Transfer, RemoteError> {
        let started = Instant::now();
        // One read: the manifest sent is the one whose files are sent, even
        // if a forced rerun replaces the entry meanwhile.
        let manifest_bytes = match std::fs::read(store.manifest_path(key)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RemoteError::NotStored {
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            std::io::Error::other(format!("the local manifest of {key} is not valid: {e}"))
        })?;
        if self.contains(key)? {
            return Ok(Transfer {
                entry_present: true,
                seconds: started.elapsed().as_secs_f64(),
                ..Transfer::default()
            });
        }
        let out_dir = store.output_dir(key);
        let mut transfer = self.runtime.block_on(async {
            use futures::{StreamExt, TryStreamExt};
            let results: Vec<Option<u64>> = futures::stream::iter(manifest.outputs.iter())
                .map(|(path, file)| {
                    let source = out_dir.join(path);
                    let target = self.object_path(&file.blake3);
                    let objects = self.objects.clone();
                    async move {
                        match objects.head(&target).await {
                            Ok(meta) if meta.size == file.size => return Ok(None),
                            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(self.store_error(e)),
                        }
                        let sent = match &self.directory {
                            Some(dir) => {
                                let (dir, object) = (dir.clone(), target.to_string());
                                let (source, expected) = (source.clone(), file.blake3.clone());
                                // The copy and its hash block: off the
                                // runtime's threads, so files move at once.
                                tokio::task::spawn_blocking(move || {
                                    transfer::copy_into(&dir, &object, &source, &expected)
                                })
                                .await
                                .unwrap_or_else(|e| {
                                    Err(transfer::TransferError::Io(std::io::Error::other(e)))
                                })
                            }
                            None => {
                                let staging = self.path(&["tmp", &crate::fsutil::unique_name()]);
                                transfer::upload(
                                    objects.as_ref(),
                                    &target,
                                    &staging,
                                    &source,
                                    &file.blake3,
                                )
                                .await
                            }
                        }
                        .map_err(|e| self.transfer_error(e, key, path))?;
                        if sent.blake3 != file.blake3 || sent.size != file.size {
                            // Someone changed the file after it was stored;
                            // the remote never got it under this name.
                            return Err(RemoteError::LocalChanged {
                                key: key.to_string(),
                                path: path.clone(),
                            });
                        }
                        Ok(Some(sent.size))
                    }
                })
                .buffer_unordered(PARALLEL_FILES)
                .try_collect()
                .await?;
            let mut transfer = Transfer::default();
            for sent in results {
                match sent {
                    Some(bytes) => {
                        transfer.files += 1;
                        transfer.bytes += bytes;
                    }
                    None => transfer.skipped += 1,
                }
            }
            self.objects
                .put(&self.manifest_path(key), manifest_bytes.into())
                .await
                .map_err(|e| self.store_error(e))?;
            Ok::<_, RemoteError>(transfer)
        })?;
        transfer.seconds = started.elapsed().as_secs_f64();
        Ok(transfer)
    }

    /// Receives the entry `key` into the local store: every output file
    /// into a staging folder, hashed as it arrives, and the entry published
    /// only when all match the manifest. Call with the stage lock held. An
    /// entry already stored is skipped.
    pub fn pull(
        &self,
        store: &Store,
        key: &str,
        lock: &StageLock,
    ) -> Result<Transfer, RemoteError> {
        let started = Instant::now();
        if store.contains(key) {
            return Ok(Transfer {
                entry_present: true,
                seconds: started.elapsed().as_secs_f64(),
                ..Transfer::default()
            });
        }
        let (manifest, manifest_bytes) = self.remote_manifest(key)?;
        let staging = store.begin(key, lock)?;
        let out_dir = staging.out_dir();
        let received = self.runtime.block_on(async {
            use futures::{StreamExt, TryStreamExt};
            futures::stream::iter(manifest.outputs.iter())
                .map(|(path, file)| {
                    let target = out_dir.join(path);
                    let source = self.object_path(&file.blake3);
                    let objects = self.objects.clone();
                    async move {
                        let got = transfer::download(objects.as_ref(), &source, &target)
                            .await
                            .map_err(|e| self.transfer_error(e, key, path))?;
                        if got.blake3 != file.blake3 || got.size != file.size {
                            return Err(RemoteError::Corrupted(Box::new(Corruption {
                                remote: self.display.clone(),
                                key: key.to_string(),
                                path: path.clone(),
                                expected: file.blake3.clone(),
                                expected_size: file.size,
                                found: got.blake3,
                                found_size: got.size,
                            })));
                        }
                        Ok::<_, RemoteError>(got.size)
                    }
                })
                .buffer_unordered(PARALLEL_FILES)
                .try_collect::<Vec<u64>>()
                .await
        });
        let sizes = match received {
            Ok(sizes) => sizes,
            Err(e) => {
                store.abandon(staging);
                return Err(e);
            }
        };
        store.publish_received(staging, key, &manifest_bytes)?;
        Ok(Transfer {
            files: sizes.len(),
            bytes: sizes.iter().sum(),
            seconds: started.elapsed().as_secs_f64(),
            ..Transfer::default()
        })
    }

    /// The remote's manifest for `key`, checked: it names this key, its key
    /// material hashes to it, and its output paths stay inside the entry.
    fn remote_manifest(&self, key: &str) -> Result<(Manifest, Vec<u8>), RemoteError> {
        let bytes = self.runtime.block_on(async {
            let got = self.objects.get(&self.manifest_path(key)).await?;
            got.bytes().await
        });
        let bytes = match bytes {
            Ok(b) => b.to_vec(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::NotInRemote {
                    remote: self.display.clone(),
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(self.store_error(e)),
        };
        let bad = |message: String| RemoteError::BadManifest {
            remote: self.display.clone(),
            key: key.to_string(),
            message,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.key != key || manifest.material.key() != key {
            return Err(bad(
                "it describes another key (its key material does not hash to this key)".into(),
            ));
        }
        for (path, file) in &manifest.outputs {
            if !transfer::is_plain_relative(path) {
                return Err(bad(format!("output path `{path}` leaves the entry")));
            }
            if file.blake3.len() != 64 || !file.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("`{path}` has no blake3 digest")));
            }
        }
        Ok((manifest, bytes))
    }

    fn transfer_error(&self, e: transfer::TransferError, key: &str, path: &str) -> RemoteError {
        match e {
            transfer::TransferError::Store(object_store::Error::NotFound { .. }) => {
                RemoteError::BadManifest {
                    remote: self.display.clone(),
                    key: key.to_string(),
                    message: format!("the object for `{path}` is missing"),
                }
            }
            transfer::TransferError::Store(source) => self.store_error(source),
            transfer::TransferError::Io(e) => RemoteError::Io(std::io::Error::new(
                e.kind(),
                format!("`{path}` of entry {key}: {e}"),
            )),
        }
    }
}
