//! Extracting a fetched `.zip`, `.tar`, `.tar.gz` or `.tar.zst` archive into
//! the stage's output, refusing anything that could write outside it.
//!
//! An archive from the network is untrusted even when its checksum is
//! pinned (the pin may have been taken of a malicious file), so every entry
//! is checked before anything is written for it:
//! - names must be relative, without `..` components;
//! - symbolic links must point inside the output, and are created last, so
//!   that no later entry is written through one; an entry below a link, or
//!   a link target that passes through another link, is refused (a path
//!   through a link is not what it looks like lexically);
//! - hard links must name a regular file extracted before them;
//! - device files, FIFOs and sockets are refused.
//!
//! The error names the offending entry. What was extracted before it stays
//! in the output folder, which the engine discards when the stage fails.

use super::copy::copy_polling;
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

/// The archive formats `extract: true` understands, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    Tar,
    TarGz,
    TarZst,
}

/// The suffixes, for messages.
pub const SUPPORTED: &str = "`.zip`, `.tar`, `.tar.gz` (`.tgz`) or `.tar.zst` (`.tzst`)";

impl ArchiveKind {
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        [
            (".zip", Self::Zip),
            (".tar", Self::Tar),
            (".tar.gz", Self::TarGz),
            (".tgz", Self::TarGz),
            (".tar.zst", Self::TarZst),
            (".tzst", Self::TarZst),
        ]
        .into_iter()
        .find(|(suffix, _)| lower.ends_with(suffix))
        .map(|(_, kind)| kind)
    }
}

/// Extracts `archive` into `dest` (an existing folder); returns how many
/// files (regular files and links) it wrote.
pub fn extract(archive: &Path, kind: ArchiveKind, dest: &Path) -> anyhow::Result<usize> {
    let file =
        fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut out = Extractor::new(dest);
    match kind {
        ArchiveKind::Zip => extract_zip(file, &mut out)?,
        ArchiveKind::Tar => extract_tar(BufReader::new(file), &mut out)?,
        ArchiveKind::TarGz => {
            extract_tar(flate2::read::GzDecoder::new(BufReader::new(file)), &mut out)?
        }
        ArchiveKind::TarZst => extract_tar(zstd::stream::read::Decoder::new(file)?, &mut out)?,
    }
    out.finish()
}

/// What one archive entry is, independent of the archive format.
enum Entry {
    Dir,
    File,
    Symlink(String),
    Hardlink(String),
    /// Refused: device files, FIFOs, sockets, formats we do not handle.
    Unsupported(&'static str),
}

fn extract_tar(reader: impl Read, out: &mut Extractor) -> anyhow::Result<()> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("cannot read the tar archive")? {
        let mut entry = entry.context("cannot read the tar archive")?;
        let name = utf8(&entry.path_bytes(), "entry name")?;
        let link = entry
            .link_name_bytes()
            .map(|b| utf8(&b, "link target"))
            .transpose()?;
        let kind = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => Entry::File,
            EntryType::Directory => Entry::Dir,
            EntryType::Symlink => Entry::Symlink(link.unwrap_or_default()),
            EntryType::Link => Entry::Hardlink(link.unwrap_or_default()),
            EntryType::Char => Entry::Unsupported("a character device file"),
            EntryType::Block => Entry::Unsupported("a block device file"),
            EntryType::Fifo => Entry::Unsupported("a FIFO"),
            EntryType::GNUSparse => Entry::Unsupported("a sparse file"),
            // Metadata for the whole archive (PAX global header): no file.
            EntryType::XGlobalHeader => continue,
            _ => Entry::Unsupported("an entry of an unknown type"),
        };
        out.entry(&name, kind, &mut entry)?;
    }
    Ok(())
}

fn extract_zip(file: fs::File, out: &mut Extractor) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(file).context("cannot read the zip archive")?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).context("cannot read the zip archive")?;
        let name = entry.name().to_string();
        // The Unix file type, when the archive was made on Unix.
        let kind = match entry.unix_mode().map(|m| m & 0o170000) {
            Some(0o120000) => {
                let mut target = String::new();
                entry
                    .by_ref()
                    .take(4096)
                    .read_to_string(&mut target)
                    .with_context(|| format!("cannot read the link target of `{name}`"))?;
                Entry::Symlink(target)
            }
            Some(0o020000) => Entry::Unsupported("a character device file"),
            Some(0o060000) => Entry::Unsupported("a block device file"),
            Some(0o010000) => Entry::Unsupported("a FIFO"),
            Some(0o140000) => Entry::Unsupported("a socket"),
            _ if entry.is_dir() => Entry::Dir,
            _ => Entry::File,
        };
        out.entry(&name, kind, &mut entry)?;
    }
    Ok(())
}

fn utf8(bytes: &[u8], what: &str) -> anyhow::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        anyhow::anyhow!(
            "refusing archive entry `{}`: its {what} is not UTF-8",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Writes entries under `root`, keeping what is needed to check later ones.
struct Extractor<'a> {
    root: &'a Path,
    /// Symbolic links seen so far, by path: (entry name, target as written).
    links: BTreeMap<PathBuf, (String, String)>,
    /// Regular files written (hard links may point at these only).
    files: BTreeSet<PathBuf>,
}

fn refuse(name: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("refusing archive entry `{name}`: {why}")
}

impl<'a> Extractor<'a> {
    fn new(root: &'a Path) -> Self {
        Self {
            root,
            links: BTreeMap::new(),
            files: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, kind: Entry, body: &mut dyn Read) -> anyhow::Result<()> {
        let rel = match relative_path(name) {
            Ok(Some(rel)) => rel,
            // The archive's root folder itself (`./`).
            Ok(None) if matches!(kind, Entry::Dir) => return Ok(()),
            Ok(None) => return Err(refuse(name, "it has an empty path")),
            Err(why) => return Err(refuse(name, why)),
        };
        if let Entry::Unsupported(what) = kind {
            return Err(refuse(name, format!("it is {what}")));
        }
        self.check_parents(name, &rel)?;
        let path = self.root.join(&rel);
        if self.links.contains_key(&rel) {
            return Err(refuse(
                name,
                "a symbolic link of the same name comes earlier",
            ));
        }
        match kind {
            Entry::Dir => {
                if path.is_file() {
                    return Err(refuse(name, "a file of the same name comes earlier"));
                }
                fs::create_dir_all(&path)?;
            }
            Entry::File => {
                self.clear_for_file(name, &path)?;
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let mut writer = BufWriter::new(file);
                copy_polling(body, &mut writer, |_| {})
                    .with_context(|| format!("cannot extract `{name}`"))?;
                self.files.insert(rel);
            }
            Entry::Symlink(target) => {
                if target.is_empty() {
                    return Err(refuse(name, "the symbolic link has no target"));
                }
                if path.is_dir() {
                    return Err(refuse(name, "a folder of the same name comes earlier"));
                }
                self.files.remove(&rel);
                self.links.insert(rel, (name.to_string(), target));
            }
            Entry::Hardlink(target) => {
                let target_rel = match relative_path(&target) {
                    Ok(Some(t)) => t,
                    Ok(None) => return Err(refuse(name, "the hard link has no target")),
                    Err(why) => {
                        return Err(refuse(
                            name,
                            format!(
                                "the hard link points outside the output folder (`{target}` {why})"
                            ),
                        ));
                    }
                };
                if !self.files.contains(&target_rel) {
                    return Err(refuse(
                        name,
                        format!(
                            "the hard link points to `{target}`, which is not a regular file extracted before it"
                        ),
                    ));
                }
                self.clear_for_file(name, &path)?;
                fs::hard_link(self.root.join(&target_rel), &path)
                    .with_context(|| format!("cannot create the hard link `{name}`"))?;
                self.files.insert(rel);
            }
            Entry::Unsupported(_) => unreachable!("refused above"),
        }
        Ok(())
    }

    /// Refuses an entry below a symbolic link (writing it would follow the
    /// link), whether the link came from the archive or was already there.
    fn check_parents(&self, name: &str, rel: &Path) -> anyhow::Result<()> {
        for ancestor in rel.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            let on_disk = fs::symlink_metadata(self.root.join(ancestor))
                .is_ok_and(|m| m.file_type().is_symlink());
            if self.links.contains_key(ancestor) || on_disk {
                return Err(refuse(
                    name,
                    format!(
                        "it would be written through the symbolic link `{}`",
                        ancestor.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Makes room for a regular file or hard link: a later entry of the same
    /// name replaces a file (as tar does), never a folder or a link.
    fn clear_for_file(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        match fs::symlink_metadata(path) {
            Err(_) => {}
            Ok(m) if m.file_type().is_file() => fs::remove_file(path)?,
            Ok(m) if m.is_dir() => {
                return Err(refuse(name, "a folder of the same name comes earlier"));
            }
            Ok(_) => return Err(refuse(name, "it would replace a symbolic link")),
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        Ok(())
    }

    /// Checks every symbolic link against the complete set of links, then
    /// creates them.
    fn finish(self) -> anyhow::Result<usize> {
        for (rel, (name, target)) in &self.links {
            // A link listed before the link it sits below was not refused
            // when it was read; creating it would go through the other.
            if let Some(above) = rel
                .ancestors()
                .skip(1)
                .find(|a| self.links.contains_key(*a))
            {
                return Err(refuse(
                    name,
                    format!(
                        "it would be written through the symbolic link `{}`",
                        above.display()
                    ),
                ));
            }
            let walk = link_walk(rel, target).map_err(|why| refuse(name, why))?;
            // Every step but the last is walked through: it must be a real
            // folder, not another link, for the lexical check to hold.
            if let Some(through) = walk[..walk.len().saturating_sub(1)]
                .iter()
                .find(|step| self.links.contains_key(*step))
            {
                return Err(refuse(
                    name,
                    format!(
                        "the symbolic link's target `{target}` passes through the symbolic link `{}`",
                        through.display()
                    ),
                ));
            }
        }
        for (rel, (name, target)) in &self.links {
            let path = self.root.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink(target.replace('\\', "/"), &path)
                .with_context(|| format!("cannot create the symbolic link `{name}`"))?;
        }
        Ok(self.files.len() + self.links.len())
    }
}

/// The path of an entry relative to the output, or why it is refused.
/// `None` for the root itself (`.`, `./`). Backslashes count as separators,
/// as archivers on Windows write them.
fn relative_path(name: &str) -> Result<Option<PathBuf>, String> {
    if name.starts_with('/') || name.starts_with('\\') {
        return Err("it is an absolute path".into());
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return Err("it is an absolute path (a drive letter)".into());
    }
    if name.contains('\0') {
        return Err("its name contains a NUL byte".into());
    }
    let mut rel = PathBuf::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err("it has a `..` component".into()),
            part => rel.push(part),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// The folders a symbolic link at `rel` visits when its `target` is
/// resolved, ending with where it points; an error when that leaves the
/// output.
fn link_walk(rel: &Path, target: &str) -> Result<Vec<PathBuf>, String> {
    let outside = || format!("the symbolic link points outside the output folder (`{target}`)");
    if target.starts_with('/') || target.starts_with('\\') {
        return Err(outside());
    }
    let bytes = target.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return Err(outside());
    }
    let mut at: Vec<String> = rel
        .parent()
        .into_iter()
        .flat_map(|p| p.iter())
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let mut walk = Vec::new();
    for part in target.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => {
                if at.pop().is_none() {
                    return Err(outside());
                }
            }
            part => at.push(part.to_string()),
        }
        walk.push(at.iter().collect::<PathBuf>());
    }
    Ok(walk)
}

#[cfg(test)]
mod tests;
