//! The `pip` source: one file out of a pinned wheel. The wheel is fetched by
//! the machine's own client (`python3 -m pip download`), so whatever index,
//! mirror, proxy or certificate pip is configured with applies; then the one
//! file is streamed out of the wheel (a zip) while being hashed.

use super::copy::copy_polling;
use super::digest::{Actual, Expected, Hashing};
use super::tool::{self, ToolError};
use anyhow::{Context, bail};
use distillery_engine::Progress;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Downloads the wheel of `spec` (`name==version`) into `work` and returns
/// its path.
pub fn download_wheel(spec: &str, work: &Path, progress: &dyn Progress) -> anyhow::Result<PathBuf> {
    let dest = work.join("wheel");
    std::fs::create_dir_all(&dest)?;
    progress.log(&format!("python3 -m pip download {spec}"));
    let mut command = Command::new("python3");
    command
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--progress-bar", "off", "--dest"])
        .arg(&dest)
        .arg(spec);
    let out = match tool::run(&mut command) {
        Ok(out) => out,
        Err(ToolError::NotFound(e)) => {
            bail!("python3 -m pip not found: install pip (cannot run python3: {e})")
        }
        Err(e) => return Err(e.into()),
    };
    if !out.status.success() {
        if out.stderr.contains("No module named pip") {
            bail!("python3 -m pip not found: install pip");
        }
        bail!(
            "pip download {spec} failed ({}):\n{}",
            out.status,
            out.complaint()
        );
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(&dest)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    match wheels.as_slice() {
        [wheel] => Ok(wheel.clone()),
        [] => bail!("pip download {spec} produced no wheel"),
        _ => bail!(
            "pip download {spec} produced {} wheels; expected one",
            wheels.len()
        ),
    }
}

/// Streams the entry `inner` of `wheel` into `dest`, hashing it; a missing
/// entry is an error listing some entries the wheel does hold.
pub fn extract_file(
    wheel: &Path,
    inner: &str,
    dest: &Path,
    expected: &Expected,
    progress: &dyn Progress,
) -> anyhow::Result<Actual> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip)", wheel.display()))?;
    let wheel_name = wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let index = (0..archive.len()).find(|&i| {
        archive
            .by_index_raw(i)
            .is_ok_and(|e| e.name() == inner && !e.is_dir())
    });
    let Some(index) = index else {
        let names: Vec<String> = archive.file_names().map(String::from).collect();
        bail!(
            "`{inner}` is not in {wheel_name}; it holds for example: {}",
            some_entries(&names, inner)
        );
    };
    let mut entry = archive.by_index(index)?;
    progress.set_total(entry.size(), "bytes");
    let out =
        std::fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut writer = BufWriter::new(out);
    let mut hashing = Hashing::for_expected(expected);
    let mut position = 0u64;
    copy_polling(&mut entry, &mut writer, |chunk| {
        hashing.update(chunk);
        position += chunk.len() as u64;
        progress.set_position(position);
    })
    .with_context(|| format!("cannot extract `{inner}` from {wheel_name}"))?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(hashing.finish())
}

/// Up to eight entry names to show: those with the wanted file's name
/// first, then files outside the `.dist-info` metadata, then the rest.
fn some_entries(names: &[String], wanted: &str) -> String {
    let base = wanted.rsplit('/').next().unwrap_or(wanted);
    let mut ranked: Vec<&String> = names.iter().filter(|n| !n.ends_with('/')).collect();
    ranked.sort_by_key(|n| {
        (
            n.rsplit('/').next() != Some(base),
            n.contains(".dist-info/"),
            n.as_str(),
        )
    });
    let shown: Vec<String> = ranked.iter().take(8).map(|n| format!("`{n}`")).collect();
    let more = ranked.len().saturating_sub(shown.len());
    let mut text = shown.join(", ");
    if more > 0 {
        text.push_str(&format!(" (and {more} more)"));
    }
    if text.is_empty() {
        text = "nothing".into();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_engine::progress::NoProgress;
    use std::io::Write;

    fn wheel(dir: &Path) -> PathBuf {
        let path = dir.join("tinypkg-0.1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::FileOptions::default();
        for (name, body) in [
            ("tinypkg/__init__.py", ""),
            ("tinypkg/data/weights.bin", "weights"),
            ("tinypkg-0.1.0.dist-info/METADATA", "Name: tinypkg\n"),
        ] {
            zip.start_file(name, options).unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn extracts_one_entry_and_hashes_it() {
        let dir = tempfile::tempdir().unwrap();
        let whl = wheel(dir.path());
        let expected = Expected {
            sha256: None,
            blake3: Some(blake3::hash(b"weights").to_hex().to_string()),
        };
        let dest = dir.path().join("weights.bin");
        let actual = extract_file(
            &whl,
            "tinypkg/data/weights.bin",
            &dest,
            &expected,
            &NoProgress,
        )
        .unwrap();
        assert_eq!(actual.blake3, expected.blake3);
        assert_eq!(std::fs::read(&dest).unwrap(), b"weights");
    }

    #[test]
    fn a_missing_entry_lists_what_the_wheel_holds() {
        let dir = tempfile::tempdir().unwrap();
        let whl = wheel(dir.path());
        let err = extract_file(
            &whl,
            "tinypkg/weights.bin",
            &dir.path().join("x"),
            &Expected::default(),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`tinypkg/weights.bin` is not in tinypkg-0.1.0-py3-none-any.whl"),
            "{err}"
        );
        // The entry with the same file name comes first.
        assert!(
            err.contains("example: `tinypkg/data/weights.bin`, `tinypkg/__init__.py`"),
            "{err}"
        );
    }
}
