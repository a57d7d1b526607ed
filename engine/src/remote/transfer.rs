//! Moving one file to or from an object store, hashed on the way so that
//! what was sent or received is known by its digest without reading it
//! again.

use object_store::path::Path as ObjectPath;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart};
use std::io::{Read, Write};
use std::path::Path;

/// Files up to this size go in one request; larger ones in parts of this
/// size, several in flight at once.
const PART_BYTES: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug)]
pub enum TransferError {
    Store(object_store::Error),
    Io(std::io::Error),
}

impl From<object_store::Error> for TransferError {
    fn from(e: object_store::Error) -> Self {
        Self::Store(e)
    }
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The digest and size of what went through.
pub struct Moved {
    pub blake3: String,
    pub size: u64,
}

/// Sends the file at `source` to `target`, which the remote gets only when
/// the bytes sent hash to `expected` (the object's name): a file changed
/// since it was stored must never appear under another content's name,
/// not even for a moment. A small file is hashed in memory before its one
/// request; a large one goes in parts to `staging` first, and is copied to
/// `target` inside the store (S3's server-side copy) once its digest is
/// known, then `staging` is deleted.
pub async fn upload(
    objects: &dyn ObjectStore,
    target: &ObjectPath,
    staging: &ObjectPath,
    source: &Path,
    expected: &str,
) -> Result<Moved, TransferError> {
    let mut file = std::fs::File::open(source)?;
    let size = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    if size <= PART_BYTES as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes)?;
        hasher.update(&bytes);
        let moved = Moved {
            blake3: hasher.finalize().to_hex().to_string(),
            size: bytes.len() as u64,
        };
        if moved.blake3 == expected {
            objects.put(target, bytes.into()).await?;
        }
        return Ok(moved);
    }
    let upload = objects.put_multipart(staging).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut sent = 0u64;
    loop {
        let mut part = vec![0u8; PART_BYTES];
        let n = match read_full(&mut file, &mut part) {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e.into());
            }
        };
        if n == 0 {
            break;
        }
        part.truncate(n);
        hasher.update(&part);
        sent += n as u64;
        if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = writer.abort().await;
            return Err(e.into());
        }
        writer.put(part.into());
    }
    writer.finish().await?;
    let moved = Moved {
        blake3: hasher.finalize().to_hex().to_string(),
        size: sent,
    };
    let published = if moved.blake3 == expected {
        objects.copy(staging, target).await
    } else {
        Ok(())
    };
    let _ = objects.delete(staging).await;
    published?;
    Ok(moved)
}

/// Sends the file at `source` to the directory remote `dir` as `object`
/// (a `/`-separated path under it): the kernel copies it into a temporary
/// file there (`std::fs::copy` is copy_file_range on Linux, as `cp` is),
/// the copy is hashed, and a rename publishes it whole, only when its digest
/// is `expected` (the object's name). Object stores write through memory; a
/// directory need not.
pub fn copy_into(
    dir: &Path,
    object: &str,
    source: &Path,
    expected: &str,
) -> Result<Moved, TransferError> {
    let target = dir.join(object);
    let folder = target.parent().expect("an object path has a folder");
    std::fs::create_dir_all(folder)?;
    let name = target.file_name().expect("an object path has a name");
    // A name no other push uses, on any machine sharing the directory. The
    // `#` form is the one that object_store's directory listing skips.
    let staging = folder.join(format!(
        "{}#{}",
        name.to_string_lossy(),
        crate::fsutil::unique_name()
    ));
    let result = (|| {
        let size = std::fs::copy(source, &staging)?;
        let blake3 = crate::fsutil::hash_file(&staging)?;
        if blake3 == expected {
            std::fs::rename(&staging, &target)?;
        } else {
            std::fs::remove_file(&staging)?;
        }
        Ok(Moved { blake3, size })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

/// Receives `source` into a new file at `target` (its folders created).
pub async fn download(
    objects: &dyn ObjectStore,
    source: &ObjectPath,
    target: &Path,
) -> Result<Moved, TransferError> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let got = objects.get(source).await?;
    let mut out = std::fs::File::create(target)?;
    match got.payload {
        // A directory remote hands over the file itself: the kernel copies
        // it (`io::copy` between files is copy_file_range on Linux), and
        // the copy, which is what enters the store, is hashed after.
        GetResultPayload::File(mut file, _) => {
            let size = std::io::copy(&mut file, &mut out)?;
            drop(out);
            Ok(Moved {
                blake3: crate::fsutil::hash_file(target)?,
                size,
            })
        }
        GetResultPayload::Stream(mut stream) => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            use futures::StreamExt;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                out.write_all(&chunk)?;
                size += chunk.len() as u64;
            }
            // Not synced, like the files an op writes: the store syncs the
            // manifest and the folder when it publishes.
            out.flush()?;
            Ok(Moved {
                blake3: hasher.finalize().to_hex().to_string(),
                size,
            })
        }
    }
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether a manifest's output path stays inside the entry: relative, with
/// only plain names (no `..`, no root, no empty parts).
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_accepted() {
        for good in ["out.txt", "a/b/model.safetensors", "x.y/z"] {
            assert!(is_plain_relative(good), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }
}
