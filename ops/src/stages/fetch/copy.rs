//! Streaming bytes from a download, a wheel or an archive to disk in chunks,
//! so that each chunk can be hashed and counted, and an interrupt stops the
//! copy between two chunks instead of after a multi-GB file.

use distillery_engine::interrupt::{self, Interrupted};
use std::io::{ErrorKind, Read, Write};

const CHUNK: usize = 1 << 20;

/// Copies `reader` to `writer`, calling `on_chunk` with every chunk before
/// it is written; returns the bytes copied. Fails with [`Interrupted`] when a
/// stop was requested.
pub fn copy_polling(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    mut on_chunk: impl FnMut(&[u8]),
) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        if interrupt::requested() {
            return Err(Interrupted(Some("while fetching".into())).into());
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        on_chunk(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    writer.flush()?;
    Ok(total)
}

/// Moves a finished file into place: a rename when both paths are on one
/// file system (the store's scratch and staging folders are), a copy
/// otherwise.
pub fn move_file(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)?;
    std::fs::remove_file(from)
}
