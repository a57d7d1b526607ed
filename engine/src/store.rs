//! The content-addressed artifact store.
//!
//! Layout under the store root (`.distillery/` next to the recipe):
//! - `store/<key>/out/`: the artifact; `store/<key>/manifest.json`: why it exists
//! - `tmp/`: stages being written; published by one atomic rename
//! - `scratch/<key>/`: checkpoints of an unfinished stage, kept across interruptions
//! - `locks/`: one lock file per stage key, and `store.lock` (runs share it,
//!   `cache gc` takes it exclusively)
//! - `stages/<recipe>/<stage>.json`: the key each stage last had, so that
//!   `status --why` can compare (one small file per stage: no merge conflicts)
//! - `stat-cache.json`: digests of external files by stat
//!
//! A crash at any point leaves either no entry or a complete one: the
//! manifest is written inside the staging folder before the rename.

use crate::fsutil::{self, write_atomically};
use crate::key::KeyMaterial;
use crate::shared_lock::{SharedLock, Timing};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Digest and size of one output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub size: u64,
    pub blake3: String,
}

/// What a store entry is and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub recipe: String,
    pub stage: String,
    pub material: KeyMaterial,
    /// Output files by path relative to `out/`.
    pub outputs: BTreeMap<String, OutputFile>,
    pub created_unix: u64,
    pub duration_secs: f64,
    pub distillery_version: String,
}

/// A stage's last key in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub material: KeyMaterial,
}

pub struct Store {
    root: PathBuf,
}

/// Held while a stage key is being computed; dropping it releases the lock.
pub struct StageLock {
    _file: File,
}

/// Held for the length of a run (shared) or a garbage collection (exclusive).
pub struct StoreLock {
    _file: File,
}

/// A stage's output being written.
pub struct Staging {
    pub dir: PathBuf,
}

impl Staging {
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// A problem `cache verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyProblem {
    pub key: String,
    pub stage: String,
    pub path: String,
    pub problem: String,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        for sub in ["store", "tmp", "scratch", "locks", "stages"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stat_cache_path(&self) -> PathBuf {
        self.root.join("stat-cache.json")
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("store").join(key)
    }

    /// The artifact folder of a published entry.
    pub fn output_dir(&self, key: &str) -> PathBuf {
        self.entry_dir(key).join("out")
    }

    pub fn scratch_dir(&self, key: &str) -> PathBuf {
        self.root.join("scratch").join(key)
    }

    /// Where a published entry's manifest is.
    pub fn manifest_path(&self, key: &str) -> PathBuf {
        self.entry_dir(key).join("manifest.json")
    }

    /// The manifest of a published entry, if there is one.
    pub fn manifest(&self, key: &str) -> Option<Manifest> {
        let bytes = fs::read(self.entry_dir(key).join("manifest.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entry_dir(key).join("manifest.json").is_file()
    }

    /// Waits until no other process computes `key`.
    pub fn lock_stage(&self, key: &str) -> io::Result<StageLock> {
        let file = lock_file(&self.root.join("locks").join(format!("{key}.lock")))?;
        file.lock()?;
        Ok(StageLock { _file: file })
    }

    /// Waits until no process on any machine sharing the store's
    /// filesystem computes `key` (see [`crate::shared_lock`]: `flock`, which
    /// [`Store::lock_stage`] uses, does not hold across NFS clients). Slurm
    /// jobs take it before the stage lock.
    pub fn lock_stage_across_machines(&self, key: &str) -> io::Result<SharedLock> {
        SharedLock::acquire(
            &self.root.join("locks").join(format!("{key}.shared")),
            Timing::default(),
        )
    }

    pub fn lock_shared(&self) -> io::Result<StoreLock> {
        let file = lock_file(&self.root.join("locks").join("store.lock"))?;
        file.lock_shared()?;
        Ok(StoreLock { _file: file })
    }

    pub fn lock_exclusive(&self) -> io::Result<StoreLock> {
        let file = lock_file(&self.root.join("locks").join("store.lock"))?;
        file.lock()?;
        Ok(StoreLock { _file: file })
    }

    /// A fresh staging folder for `key`, after removing what an interrupted
    /// attempt left. Call with the stage lock held.
    pub fn begin(&self, key: &str, _lock: &StageLock) -> io::Result<Staging> {
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{key}."))
            {
                fs::remove_dir_all(entry.path())?;
            }
        }
        let dir = tmp.join(format!("{key}.{}", std::process::id()));
        fs::create_dir_all(dir.join("out"))?;
        fs::create_dir_all(self.scratch_dir(key))?;
        Ok(Staging { dir })
    }

    /// Hashes the staged outputs, writes the manifest and publishes the entry
    /// with one rename. An existing entry for the key (a forced rerun) is
    /// replaced. The scratch folder is removed once published.
    pub fn publish(
        &self,
        staging: Staging,
        recipe: &str,
        stage: &str,
        material: &KeyMaterial,
        duration_secs: f64,
    ) -> io::Result<Manifest> {
        let key = material.key();
        let outputs = hash_tree(&staging.out_dir())?;
        let manifest = Manifest {
            key: key.clone(),
            recipe: recipe.to_string(),
            stage: stage.to_string(),
            material: material.clone(),
            outputs,
            created_unix: now_unix(),
            duration_secs,
            distillery_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.install(staging, &key, &serde_json::to_vec_pretty(&manifest)?)?;
        Ok(manifest)
    }

    /// Publishes an entry received from a remote, whose outputs the caller
    /// has verified against `manifest` (the remote's bytes, kept as they
    /// are so that both stores hold the same file).
    pub fn publish_received(&self, staging: Staging, key: &str, manifest: &[u8]) -> io::Result<()> {
        self.install(staging, key, manifest)
    }

    /// Writes the manifest into the staging folder and renames the folder
    /// into place; the scratch folder goes once the entry is published.
    fn install(&self, staging: Staging, key: &str, manifest: &[u8]) -> io::Result<()> {
        write_atomically(&staging.dir.join("manifest.json"), manifest)?;
        sync_dir(&staging.dir)?;
        let target = self.entry_dir(key);
        if target.exists() {
            let trash = self
                .root
                .join("tmp")
                .join(format!("{key}.replaced.{}", std::process::id()));
            fs::rename(&target, &trash)?;
            fs::rename(&staging.dir, &target)?;
            fs::remove_dir_all(&trash)?;
        } else {
            fs::rename(&staging.dir, &target)?;
        }
        sync_dir(&self.root.join("store"))?;
        let scratch = self.scratch_dir(key);
        if scratch.exists() {
            fs::remove_dir_all(scratch)?;
        }
        Ok(())
    }

    /// Drops a failed attempt's staging folder (the scratch folder stays, so
    /// a rerun resumes).
    pub fn abandon(&self, staging: Staging) {
        let _ = fs::remove_dir_all(staging.dir);
    }

    /// Every published entry, oldest first.
    pub fn entries(&self) -> io::Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join("store"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(m) = self.manifest(&name) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes the entries `doomed` selects. Takes the store lock
    /// exclusively, so it waits for running pipelines.
    pub fn remove_where(&self, doomed: impl Fn(&Manifest) -> bool) -> io::Result<Vec<Manifest>> {
        let _lock = self.lock_exclusive()?;
        let mut removed = Vec::new();
        for manifest in self.entries()? {
            if doomed(&manifest) {
                let trash = self.root.join("tmp").join(format!("{}.gc", manifest.key));
                fs::rename(self.entry_dir(&manifest.key), &trash)?;
                fs::remove_dir_all(&trash)?;
                removed.push(manifest);
            }
        }
        Ok(removed)
    }

    /// Rehashes every output of the given entries (all when None) and
    /// reports files that changed, vanished or appeared.
    pub fn verify(
        &self,
        keys: Option<&BTreeSet<String>>,
    ) -> io::Result<(usize, Vec<VerifyProblem>)> {
        let mut problems = Vec::new();
        let mut checked = 0;
        for manifest in self.entries()? {
            if keys.is_some_and(|k| !k.contains(&manifest.key)) {
                continue;
            }
            checked += 1;
            let actual = hash_tree(&self.output_dir(&manifest.key))?;
            let problem = |path: &str, what: String| VerifyProblem {
                key: manifest.key.clone(),
                stage: manifest.stage.clone(),
                path: path.to_string(),
                problem: what,
            };
            for (path, expected) in &manifest.outputs {
                match actual.get(path) {
                    None => problems.push(problem(path, "missing".into())),
                    Some(found) if found != expected => problems.push(problem(
                        path,
                        format!(
                            "content changed (blake3 {} in the manifest, {} on disk; {} -> {} bytes)",
                            &expected.blake3[..16],
                            &found.blake3[..16],
                            expected.size,
                            found.size
                        ),
                    )),
                    _ => {}
                }
            }
            for path in actual.keys() {
                if !manifest.outputs.contains_key(path) {
                    problems.push(problem(path, "not in the manifest".into()));
                }
            }
        }
        Ok((checked, problems))
    }

    fn record_path(&self, recipe: &str, stage: &str) -> PathBuf {
        // Expanded matrix stages (`s[a=x y]`, `s[a=x_y]`) can make the same
        // safe name; a digest of the exact name keeps their records apart.
        let safe = safe_file_name(stage);
        let file = if safe == stage {
            safe
        } else {
            format!("{safe}-{}", &blake3::hash(stage.as_bytes()).to_hex()[..12])
        };
        self.root
            .join("stages")
            .join(safe_file_name(recipe))
            .join(format!("{file}.json"))
    }

    /// Remembers the key a stage had in its last run.
    pub fn record_stage(
        &self,
        recipe: &str,
        stage: &str,
        material: &KeyMaterial,
    ) -> io::Result<()> {
        let path = self.record_path(recipe, stage);
        fs::create_dir_all(path.parent().unwrap())?;
        let record = StageRecord {
            key: material.key(),
            material: material.clone(),
        };
        write_atomically(&path, &serde_json::to_vec_pretty(&record)?)
    }

    pub fn stage_record(&self, recipe: &str, stage: &str) -> Option<StageRecord> {
        let bytes = fs::read(self.record_path(recipe, stage)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn lock_file(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// `name` with every character but ASCII letters, digits, `-`, `_` and `.`
/// replaced by `_`: a recipe or stage name usable as a file name.
pub fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Digests of every file under `dir`, by relative path with `/` separators.
pub fn hash_tree(dir: &Path) -> io::Result<BTreeMap<String, OutputFile>> {
    use rayon::prelude::*;
    fsutil::files_under(dir)?
        .par_iter()
        .map(|rel| {
            let path = dir.join(rel);
            let size = fs::metadata(&path)?.len();
            let blake3 = fsutil::hash_file(&path)?;
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            Ok((rel, OutputFile { size, blake3 }))
        })
        .collect()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}
