//! The machine's config file: what belongs to a machine or a cluster rather
//! than to a recipe. A recipe is shared between teams and machines; which
//! executor runs it, the partition and account its jobs are charged to, and
//! the team's remote cache are this machine's business.
//!
//! `$DISTILLERY_CONFIG`, else `$XDG_CONFIG_HOME/distillery/config.yaml`,
//! else `~/.config/distillery/config.yaml`; none is fine.
//!
//! ```yaml
//! executor: slurm
//! remote: s3://team-bucket/distillery
//! slurm:
//!   defaults: { partition: gpu, account: my-team, time: "04:00:00" }
//!   ops:
//!     distill: { gpus: 1 }
//! ```
//!
//! The command line comes first, then the recipe, then this file: what a
//! stage's job asks for is its recipe's levels (stage, op, defaults) over
//! this file's (op, defaults).

use crate::diagnostic::{Diagnostic, Span, did_you_mean, quoted_list};
use crate::recipe::ExecutorKind;
use crate::slurm::resources::{self, SlurmSettings};
use crate::yaml;
use std::path::{Path, PathBuf};

const KEYS: &[&str] = &["executor", "remote", "slurm"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub executor: Option<ExecutorKind>,
    pub remote: Option<String>,
    pub slurm: SlurmSettings,
}

/// A config file that cannot be used: its path, text and problems.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Config {
    /// Where the config file is looked for.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("DISTILLERY_CONFIG") {
            return Some(PathBuf::from(path));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("distillery").join("config.yaml"))
    }

    /// The config at the default path; the empty config when there is no
    /// file (a `DISTILLERY_CONFIG` naming a missing file is an error).
    pub fn load_default() -> Result<Self, ConfigError> {
        let Some(path) = Self::default_path() else {
            return Ok(Self::default());
        };
        if !path.exists() && std::env::var_os("DISTILLERY_CONFIG").is_none() {
            return Ok(Self::default());
        }
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |source: String, diagnostics: Vec<Diagnostic>| ConfigError {
            path: path.to_path_buf(),
            source,
            diagnostics,
        };
        let source = std::fs::read_to_string(path).map_err(|e| {
            fail(
                String::new(),
                vec![Diagnostic::new(
                    "config::unreadable",
                    format!("cannot read the config file {}: {e}", path.display()),
                    Span::default(),
                )],
            )
        })?;
        let (root, mut problems) = yaml::parse(&source);
        let Some(root) = root else {
            // An empty file is an empty config.
            return if problems.is_empty() {
                Ok(Self::default())
            } else {
                Err(fail(source, problems))
            };
        };
        let Some(entries) = root.as_map() else {
            problems.push(
                Diagnostic::new(
                    "config::not-a-mapping",
                    format!("a config file is a mapping, found {}", root.kind_name()),
                    root.span,
                )
                .label("expected `executor:`, `remote:` or `slurm:`"),
            );
            return Err(fail(source, problems));
        };
        let mut config = Self::default();
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default();
            match name.as_str() {
                "executor" => match value.as_str().and_then(ExecutorKind::parse) {
                    Some(kind) => config.executor = Some(kind),
                    None => problems.push(
                        Diagnostic::new(
                            "config::invalid-executor",
                            format!(
                                "`executor` must be one of {}",
                                quoted_list(ExecutorKind::NAMES)
                            ),
                            value.span,
                        )
                        .label("unknown executor"),
                    ),
                },
                "remote" => match value.as_str().filter(|s| !s.trim().is_empty()) {
                    Some(url) => config.remote = Some(url.to_string()),
                    None => problems.push(
                        Diagnostic::new(
                            "config::invalid-remote",
                            "`remote` must be a directory or a URL",
                            value.span,
                        )
                        .label("expected a string"),
                    ),
                },
                "slurm" => {
                    let (settings, found) = resources::parse_settings(value);
                    problems.extend(found);
                    config.slurm = settings.unwrap_or_default();
                }
                other => {
                    let mut d = Diagnostic::new(
                        "config::unknown-key",
                        format!("unknown key `{other}` in the config file"),
                        key.span,
                    )
                    .label("not a config key");
                    d.help = Some(match did_you_mean(other, KEYS) {
                        Some(hint) => hint,
                        None => format!("keys: {}", quoted_list(KEYS)),
                    });
                    problems.push(d);
                }
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(source, problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn a_config_names_executor_remote_and_cluster_resources() {
        let config = load(
            "executor: slurm\nremote: s3://b/p\nslurm:\n  defaults: { partition: gpu, cpus: 4 }\n  ops:\n    distill: { gpus: 1 }\n",
        )
        .unwrap();
        assert_eq!(config.executor, Some(ExecutorKind::Slurm));
        assert_eq!(config.remote.as_deref(), Some("s3://b/p"));
        let recipe_level = crate::slurm::resources::Resources {
            cpus: Some(8),
            ..Default::default()
        };
        let merged = recipe_level.over(&config.slurm.for_op("distill"));
        assert_eq!(
            merged.sbatch_args(),
            ["--cpus-per-task=8", "--gpus=1", "--partition=gpu"]
        );
        assert_eq!(load("").unwrap(), Config::default());
    }

    #[test]
    fn problems_are_reported_where_they_are() {
        let text = "executor: pbs\nremot: x\nslurm: { defaults: { time: soon } }\n";
        let e = load(text).unwrap_err();
        let codes: Vec<&str> = e.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            [
                "config::invalid-executor",
                "config::unknown-key",
                "recipe::invalid-resources"
            ]
        );
        assert_eq!(
            e.diagnostics[1].help.as_deref(),
            Some("did you mean `remote`?")
        );
        let at = &e.diagnostics[2].primary.span;
        assert_eq!(&text[at.start..at.end], "soon");
    }
}
