//! Content digests of external files and folders, computed in parallel with
//! blake3, and remembered in a stat cache (path, size, mtime, inode ->
//! digest) so that a second plan over unchanged multi-GB inputs reads nothing.

use crate::fsutil;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file modified this recently may still change within the same mtime
/// tick, so its digest is not cached ("racy" entries, as git calls them).
const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    digest: String,
}

/// Digests files by content, reusing digests of files whose metadata has
/// not changed since they were last hashed.
pub struct FileHasher {
    cache_path: Option<PathBuf>,
    entries: Mutex<BTreeMap<PathBuf, StatEntry>>,
    dirty: Mutex<bool>,
    bytes_read: std::sync::atomic::AtomicU64,
}

impl FileHasher {
    /// A hasher whose stat cache lives in `cache_path` (created on save).
    pub fn with_cache(cache_path: PathBuf) -> Self {
        let entries = std::fs::read(&cache_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            cache_path: Some(cache_path),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
            bytes_read: 0.into(),
        }
    }

    /// A hasher without a persistent cache.
    pub fn uncached() -> Self {
        Self {
            cache_path: None,
            entries: Mutex::new(BTreeMap::new()),
            dirty: Mutex::new(false),
            bytes_read: 0.into(),
        }
    }

    /// Bytes read from disk so far (cache hits read nothing).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Digests of many paths, in parallel. A folder's digest covers the
    /// names and contents of every file under it.
    pub fn digest_all(&self, paths: &[PathBuf]) -> io::Result<Vec<String>> {
        paths.par_iter().map(|p| self.digest(p)).collect()
    }

    pub fn digest(&self, path: &Path) -> io::Result<String> {
        let metadata = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if metadata.is_dir() {
            return self.digest_dir(path);
        }
        let absolute = std::path::absolute(path)?;
        let stat = stat_of(&metadata);
        if let Some(entry) = self.entries.lock().unwrap().get(&absolute)
            && (entry.size, entry.mtime_ns, entry.inode) == stat
        {
            return Ok(entry.digest.clone());
        }
        let digest = fsutil::hash_file(path)?;
        self.bytes_read
            .fetch_add(metadata.len(), std::sync::atomic::Ordering::Relaxed);
        let modified = metadata.modified().unwrap_or(UNIX_EPOCH);
        let racy = SystemTime::now()
            .duration_since(modified)
            .map_or(true, |age| age < RACY_WINDOW);
        if !racy {
            self.entries.lock().unwrap().insert(
                absolute,
                StatEntry {
                    size: stat.0,
                    mtime_ns: stat.1,
                    inode: stat.2,
                    digest: digest.clone(),
                },
            );
            *self.dirty.lock().unwrap() = true;
        }
        Ok(digest)
    }

    fn digest_dir(&self, dir: &Path) -> io::Result<String> {
        let mut files = fsutil::files_under(dir)?;
        // Sorted as paths (component by component), which the digests of
        // stored stages depend on.
        files.sort();
        let full: Vec<PathBuf> = files.iter().map(|rel| dir.join(rel)).collect();
        let digests = self.digest_all(&full)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"distillery-dir-v1\0");
        for (rel, digest) in files.iter().zip(digests) {
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update(b"\0");
            hasher.update(digest.as_bytes());
            hasher.update(b"\n");
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Writes the stat cache if it changed (atomically; concurrent writers
    /// each leave a complete file).
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.cache_path else {
            return Ok(());
        };
        if !*self.dirty.lock().unwrap() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let bytes = serde_json::to_vec(&*self.entries.lock().unwrap())?;
        fsutil::write_atomically(path, &bytes)
    }
}

fn stat_of(metadata: &std::fs::Metadata) -> (u64, i128, u64) {
    let mtime_ns = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0;
    (metadata.len(), mtime_ns, inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        std::fs::write(&file, vec![7u8; 4096]).unwrap();
        // Age the file past the racy window.
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache = dir.path().join("stat-cache.json");
        let first = FileHasher::with_cache(cache.clone());
        let d1 = first.digest(&file).unwrap();
        assert_eq!(first.bytes_read(), 4096);
        first.save().unwrap();
        let second = FileHasher::with_cache(cache);
        assert_eq!(second.digest(&file).unwrap(), d1);
        assert_eq!(second.bytes_read(), 0);
    }

    #[test]
    fn changed_content_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "one").unwrap();
        let hasher = FileHasher::uncached();
        let d1 = hasher.digest(&file).unwrap();
        std::fs::write(&file, "two").unwrap();
        assert_ne!(hasher.digest(&file).unwrap(), d1);
    }

    #[test]
    fn folder_digest_covers_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), "1").unwrap();
        let hasher = FileHasher::uncached();
        let d1 = hasher.digest(dir.path()).unwrap();
        std::fs::rename(dir.path().join("sub/x"), dir.path().join("sub/y")).unwrap();
        assert_ne!(hasher.digest(dir.path()).unwrap(), d1);
    }
}
