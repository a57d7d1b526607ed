//! `fetch`: downloads pinned files (a URL, a file inside a pip wheel, or files
//! of a Hugging Face repository at a revision), verifies them against the
//! recipe's checksums and stores them as a Files artifact, so that a fresh
//! machine can obtain the teacher from the recipe alone.
//!
//! The stage key is computed from the parameters only (source and
//! checksums): a rerun is a cache hit without touching the network, and the
//! checksum is what pins the content. Everything is downloaded into the
//! stage's scratch folder and moved into the output only after every
//! checksum matched; a failed or killed fetch publishes nothing.

mod archive;
mod check;
mod copy;
mod digest;
mod hf;
mod http;
mod pip;
mod tool;

use anyhow::Context;
use archive::ArchiveKind;
use digest::Expected;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct Fetch;

/// One file name, or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileNames {
    One(String),
    Many(Vec<String>),
}

impl FileNames {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Self::One(name) => vec![name.as_str()],
            Self::Many(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

/// A checksum in hex: one for the single file fetched, or one per file,
/// keyed by the name the file is stored under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Checksum {
    One(String),
    PerFile(BTreeMap<String, String>),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchParams {
    /// Source: an `http://` or `https://` address of one file. Exactly one of
    /// `url`, `pip` and `hf` is given.
    #[serde(default)]
    pub url: Option<String>,
    /// Source: a Python package pinned as `name==version`; its wheel is
    /// downloaded with `python3 -m pip download` (the machine's pip
    /// configuration applies) and the file named by `file` is taken out of it.
    #[serde(default)]
    pub pip: Option<String>,
    /// Source: a Hugging Face repository, `owner/name`, downloaded with the
    /// `hf` client (or `huggingface-cli`) at `revision`; `file` names the files.
    #[serde(default)]
    pub hf: Option<String>,
    /// The commit or tag of the `hf` repository (required with `hf`).
    #[serde(default)]
    pub revision: Option<String>,
    /// With `pip`: the path of the one file inside the wheel (stored under its
    /// file name). With `hf`: one or more files of the repository (stored
    /// under their paths in it). With `url`: the name to store the download
    /// under (default: the last segment of the URL's path).
    #[serde(default)]
    pub file: Option<FileNames>,
    /// Expected SHA-256 of the fetched file (64 hex digits), or a map from
    /// each stored file name to its SHA-256. At least one of `sha256` and
    /// `blake3` is required; a mismatch fails the stage and stores nothing.
    #[serde(default)]
    pub sha256: Option<Checksum>,
    /// Expected BLAKE3 of the fetched file (64 hex digits), or a map from
    /// each stored file name to its BLAKE3.
    #[serde(default)]
    pub blake3: Option<Checksum>,
    /// With `url`: the download is a `.zip`, `.tar`, `.tar.gz` or `.tar.zst`
    /// archive whose contents are stored instead of it (the checksum is the
    /// archive's). Absolute paths, `..`, links leading outside and device
    /// files are refused.
    #[serde(default)]
    pub extract: bool,
}

/// Where the files come from, once the parameters are checked.
enum Source<'a> {
    Url(&'a str),
    Pip { spec: &'a str, file: &'a str },
    Hf { repo: &'a str, revision: &'a str },
}

/// One file to fetch: its name at the source and where it is stored.
struct Target {
    /// The path inside the wheel or the repository (the URL for `url`).
    source: String,
    /// Relative path in the output (and the key of a per-file checksum).
    stored: String,
    expected: Expected,
}

impl TypedOp for Fetch {
    type Params = FetchParams;
    const NAME: &'static str = "fetch";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Downloads pinned files (a URL, a file of a pip wheel, or files of a Hugging Face repository at a revision), checks their SHA-256 or BLAKE3, and stores them.";

    fn slots(&self) -> Vec<Slot> {
        Vec::new()
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }

    fn check(&self, p: &FetchParams, _: &CheckContext) -> Vec<ParamIssue> {
        check::params(p)
    }

    fn run(&self, p: FetchParams, ctx: &RunContext) -> anyhow::Result<()> {
        let source = source(&p).map_err(|e| anyhow::anyhow!(e.message))?;
        let targets = targets(&p).map_err(|e| anyhow::anyhow!(e.message))?;
        std::fs::create_dir_all(&ctx.scratch_dir)?;
        remove_stale_downloads(&ctx.scratch_dir);
        // Downloads land here, never in the output: a killed attempt leaves
        // only this folder, which the next attempt removes.
        let work = tempfile::Builder::new()
            .prefix("fetch-")
            .tempdir_in(&ctx.scratch_dir)
            .with_context(|| format!("cannot create a folder in {}", ctx.scratch_dir.display()))?;
        let work = work.path();
        let downloads = work.join("files");
        std::fs::create_dir_all(&downloads)?;

        let mut fetched: Vec<(PathBuf, &Target)> = Vec::new();
        match source {
            Source::Url(url) => {
                let target = &targets[0];
                let path = downloads.join("download.part");
                let actual = http::download(url, &path, &target.expected, ctx.progress)?;
                digest::verify(&target.stored, &target.expected, &actual)?;
                fetched.push((path, target));
            }
            Source::Pip { spec, file } => {
                let wheel = pip::download_wheel(spec, work, ctx.progress)?;
                let target = &targets[0];
                let path = downloads.join("extracted.part");
                let actual =
                    pip::extract_file(&wheel, file, &path, &target.expected, ctx.progress)?;
                digest::verify(&target.stored, &target.expected, &actual)?;
                fetched.push((path, target));
            }
            Source::Hf { repo, revision } => {
                let files: Vec<String> = targets.iter().map(|t| t.source.clone()).collect();
                let programs: Vec<std::ffi::OsString> =
                    hf::CLIENTS.iter().map(|c| (*c).into()).collect();
                hf::download(&programs, repo, revision, &files, &downloads, ctx.progress)?;
                for target in &targets {
                    let path = downloads.join(&target.source);
                    let actual = digest::hash_file(&path, &target.expected)?;
                    digest::verify(&target.stored, &target.expected, &actual)?;
                    fetched.push((path, target));
                }
            }
        }

        // Every checksum matched: only now does anything enter the output.
        for (path, target) in fetched {
            if p.extract {
                let kind = ArchiveKind::from_name(&target.stored)
                    .context("checked at plan time: an archive suffix")?;
                let count = archive::extract(&path, kind, &ctx.output_dir)
                    .with_context(|| format!("cannot extract `{}`", target.stored))?;
                ctx.progress
                    .log(&format!("extracted {count} files from {}", target.stored));
            } else {
                copy::move_file(&path, &ctx.output_dir.join(&target.stored))?;
                ctx.progress.log(&format!("stored {}", target.stored));
            }
        }
        Ok(())
    }
}

/// Removes what a killed attempt left in the scratch folder (partial
/// downloads are not resumed: the next attempt starts over). The engine
/// holds the stage's lock, so no other attempt is using them.
fn remove_stale_downloads(scratch: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("fetch-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The one source the parameters name (checked at plan time).
fn source(p: &FetchParams) -> Result<Source<'_>, ParamIssue> {
    match (&p.url, &p.pip, &p.hf) {
        (Some(url), None, None) => Ok(Source::Url(url)),
        (None, Some(spec), None) => {
            let file = match &p.file {
                Some(FileNames::One(file)) => file.as_str(),
                Some(FileNames::Many(files)) if files.len() == 1 => files[0].as_str(),
                _ => {
                    return Err(ParamIssue::at(
                        &["pip"],
                        "`pip` needs `file`: the path of one file inside the wheel",
                    ));
                }
            };
            Ok(Source::Pip { spec, file })
        }
        (None, None, Some(repo)) => Ok(Source::Hf {
            repo,
            revision: p
                .revision
                .as_deref()
                .ok_or_else(|| ParamIssue::at(&["hf"], "`hf` needs `revision`: a commit or tag"))?,
        }),
        _ => Err(ParamIssue::at(
            &[],
            "a fetch needs exactly one source: `url`, `pip` or `hf`",
        )),
    }
}

/// The files to fetch with their stored names and checksums.
fn targets(p: &FetchParams) -> Result<Vec<Target>, ParamIssue> {
    let names: Vec<(String, String)> = match source(p)? {
        Source::Url(url) => {
            let stored = match &p.file {
                Some(FileNames::One(name)) => name.clone(),
                Some(FileNames::Many(names)) if names.len() == 1 => names[0].clone(),
                Some(FileNames::Many(_)) => {
                    return Err(ParamIssue::at(
                        &["file"],
                        "with `url`, `file` is the one name to store the download under",
                    ));
                }
                None => url_file_name(url).ok_or_else(|| {
                    ParamIssue::at(&["url"], "the URL's path does not end in a file name")
                        .help("add `file: <name>` to name the download")
                })?,
            };
            vec![(url.to_string(), stored)]
        }
        Source::Pip { file, .. } => {
            let base = file.rsplit('/').next().unwrap_or(file).to_string();
            vec![(file.to_string(), base)]
        }
        Source::Hf { .. } => {
            let files = p.file.as_ref().map(FileNames::names).unwrap_or_default();
            if files.is_empty() {
                return Err(ParamIssue::at(
                    &["hf"],
                    "`hf` needs `file`: one or more files of the repository",
                ));
            }
            files
                .iter()
                .map(|f| (f.to_string(), f.to_string()))
                .collect()
        }
    };
    let single = names.len() == 1;
    Ok(names
        .into_iter()
        .map(|(source, stored)| {
            let pick = |c: &Option<Checksum>| match c {
                Some(Checksum::One(hex)) if single => Some(hex.to_ascii_lowercase()),
                Some(Checksum::PerFile(map)) => map.get(&stored).map(|h| h.to_ascii_lowercase()),
                _ => None,
            };
            let expected = Expected {
                sha256: pick(&p.sha256),
                blake3: pick(&p.blake3),
            };
            Target {
                source,
                stored,
                expected,
            }
        })
        .collect())
}

/// The last segment of a URL's path, percent-decoded: the name a download
/// is stored under unless `file` says otherwise.
fn url_file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next()?;
    let (_, path) = path.split_once('/')?;
    let last = path.rsplit('/').next()?;
    let name = percent_decode(last)?;
    check::valid_file_name(&name).then_some(name)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
