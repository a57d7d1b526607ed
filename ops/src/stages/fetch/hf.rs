//! The `hf` source: files of a model repository at a pinned revision,
//! downloaded by the machine's own Hugging Face client (`hf download`, or the
//! older `huggingface-cli download`), so its endpoint, token and cache
//! settings apply. The files land in a folder of the stage's scratch space.

use super::tool::{self, ToolError};
use anyhow::bail;
use distillery_engine::Progress;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// The clients tried, in order.
pub const CLIENTS: [&str; 2] = ["hf", "huggingface-cli"];

/// Downloads `files` of `repo` at `revision` into `local_dir` with the first
/// client of `programs` that is installed.
pub fn download(
    programs: &[OsString],
    repo: &str,
    revision: &str,
    files: &[String],
    local_dir: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    for program in programs {
        let mut command = Command::new(program);
        command
            .arg("download")
            .arg(repo)
            .args(files)
            .arg("--revision")
            .arg(revision)
            .arg("--local-dir")
            .arg(local_dir);
        progress.log(&format!(
            "{} download {repo} --revision {revision} ({} file{})",
            program.to_string_lossy(),
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        ));
        let out = match tool::run(&mut command) {
            Ok(out) => out,
            Err(ToolError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        // A version manager's shim (pyenv) exits 127 when the command is
        // not installed in the active environment: try the next client.
        if out.status.code() == Some(127) && out.stderr.contains("not found") {
            continue;
        }
        if !out.status.success() {
            bail!(
                "{} download {repo} --revision {revision} failed ({}):\n{}",
                program.to_string_lossy(),
                out.status,
                out.complaint()
            );
        }
        for file in files {
            if !local_dir.join(file).is_file() {
                bail!(
                    "{} download {repo} did not produce `{file}`",
                    program.to_string_lossy()
                );
            }
        }
        return Ok(());
    }
    bail!(
        "neither `hf` nor `huggingface-cli` is installed: install the Hugging Face client \
         with `pip install huggingface_hub`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_engine::progress::NoProgress;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in client that records its arguments and writes each named
    /// file into `--local-dir`.
    fn fake_client(dir: &Path) -> OsString {
        let path = dir.join("fake-hf");
        std::fs::write(
            &path,
            "#!/bin/sh\n\
             echo \"$@\" > \"$(dirname \"$0\")/args\"\n\
             shift; shift\n\
             files=\"\"\n\
             while [ \"$1\" != \"--revision\" ]; do files=\"$files $1\"; shift; done\n\
             local=\"$4\"\n\
             for f in $files; do mkdir -p \"$local/$(dirname \"$f\")\"; echo \"body of $f\" > \"$local/$f\"; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.into_os_string()
    }

    #[test]
    fn runs_the_first_installed_client_with_revision_and_local_dir() {
        let dir = tempfile::tempdir().unwrap();
        let programs = vec![OsString::from("/nonexistent/hf"), fake_client(dir.path())];
        let local = dir.path().join("local");
        let files = vec![
            "config.json".to_string(),
            "sub/model.safetensors".to_string(),
        ];
        download(
            &programs,
            "owner/repo",
            "abc123",
            &files,
            &local,
            &NoProgress,
        )
        .unwrap();
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert_eq!(
            args.trim(),
            format!(
                "download owner/repo config.json sub/model.safetensors --revision abc123 --local-dir {}",
                local.display()
            )
        );
        assert!(local.join("sub/model.safetensors").is_file());
    }

    #[test]
    fn no_client_says_how_to_install_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = download(
            &[
                OsString::from("/nonexistent/hf"),
                OsString::from("/nonexistent/huggingface-cli"),
            ],
            "owner/repo",
            "v1",
            &["config.json".to_string()],
            dir.path(),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pip install huggingface_hub"), "{err}");
    }

    #[test]
    fn a_missing_file_after_download_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("quiet-hf");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = download(
            &[script.into_os_string()],
            "owner/repo",
            "v1",
            &["config.json".to_string()],
            &dir.path().join("local"),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did not produce `config.json`"), "{err}");
    }
}
