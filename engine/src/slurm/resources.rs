//! What a stage's Slurm job asks for, and where a recipe says it: a stage's
//! `resources:`, over the recipe's `slurm.ops.<op>`, over `slurm.defaults`.
//! None of it is part of a stage's key: where a stage runs does not change
//! what it computes.

use crate::diagnostic::{Diagnostic, did_you_mean, quoted_list};
use crate::yaml::Node;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One job's request. Every field is optional: what is left out comes from
/// the next level (op, then defaults), then from the cluster's own defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs for the job (`--cpus-per-task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// GPUs for the job (`--gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Memory (`--mem`), as Slurm writes it: `16G`, `4000M`, `4000` (MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Time limit (`--time`): `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Partition (`--partition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Account charged (`--account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// More `sbatch` options, each one argument: `["--qos=high", "--constraint=a100"]`.
    /// A level that gives this list replaces the lower levels' list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbatch: Option<Vec<String>>,
}

/// The recipe's `slurm:` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// Every stage's job, unless its op or the stage says otherwise.
    #[serde(default)]
    pub defaults: Resources,
    /// By op name: what that op's stages need (e.g. `distill: { gpus: 1 }`).
    #[serde(default)]
    pub ops: BTreeMap<String, Resources>,
}

impl SlurmSettings {
    /// What this level says for an op's stages: `ops.<op>` over `defaults`.
    pub fn for_op(&self, op: &str) -> Resources {
        self.ops
            .get(op)
            .unwrap_or(&Resources::default())
            .over(&self.defaults)
    }
}

/// `sbatch` options the executor sets itself.
const RESERVED: &[&str] = &[
    "--output",
    "--error",
    "--job-name",
    "--parsable",
    "--wrap",
    "-o",
    "-e",
    "-J",
];

impl Resources {
    /// `self` where it says something, `base` elsewhere.
    pub fn over(&self, base: &Resources) -> Resources {
        Resources {
            cpus: self.cpus.or(base.cpus),
            gpus: self.gpus.or(base.gpus),
            mem: self.mem.clone().or_else(|| base.mem.clone()),
            time: self.time.clone().or_else(|| base.time.clone()),
            partition: self.partition.clone().or_else(|| base.partition.clone()),
            account: self.account.clone().or_else(|| base.account.clone()),
            sbatch: self.sbatch.clone().or_else(|| base.sbatch.clone()),
        }
    }

    /// The `sbatch` arguments for this request.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(n) = self.cpus {
            args.push(format!("--cpus-per-task={n}"));
        }
        if let Some(n) = self.gpus.filter(|&n| n > 0) {
            args.push(format!("--gpus={n}"));
        }
        if let Some(mem) = &self.mem {
            args.push(format!("--mem={mem}"));
        }
        if let Some(time) = &self.time {
            args.push(format!("--time={time}"));
        }
        if let Some(p) = &self.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            args.push(format!("--account={a}"));
        }
        args.extend(self.sbatch.iter().flatten().cloned());
        args
    }

    /// Values Slurm would refuse, by field (`sbatch.0` for an item), in words.
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(mem) = &self.mem
            && !valid_mem(mem)
        {
            out.push(("mem".into(), format!("`{mem}` is not a memory size: write a number with an optional K, M, G or T (`16G`)")));
        }
        if let Some(time) = &self.time
            && !valid_time(time)
        {
            out.push(("time".into(), format!("`{time}` is not a Slurm time: write `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`")));
        }
        for (field, value) in [
            ("mem", &self.mem),
            ("time", &self.time),
            ("partition", &self.partition),
            ("account", &self.account),
        ] {
            if let Some(v) = value
                && v.chars().any(char::is_control)
            {
                out.push((field.into(), format!("{v:?} holds a control character")));
            }
        }
        for (i, arg) in self.sbatch.iter().flatten().enumerate() {
            let name = arg.split('=').next().unwrap_or_default();
            if arg.chars().any(char::is_control) {
                out.push((
                    format!("sbatch.{i}"),
                    format!("{arg:?} holds a control character"),
                ));
            } else if !arg.starts_with('-') {
                out.push((
                    format!("sbatch.{i}"),
                    format!("`{arg}` is not an option: each item is one `--name=value`"),
                ));
            } else if RESERVED.contains(&name) {
                out.push((format!("sbatch.{i}"), format!("`{name}` is set by the executor (it names the job and keeps its log in the store)")));
            }
        }
        out
    }
}

fn valid_mem(mem: &str) -> bool {
    let digits = mem.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && mem.len() - digits.len() <= 1
}

fn valid_time(time: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match time.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, time),
    };
    if days.is_some_and(|d| !number(d)) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    parts.iter().all(|p| number(p)) && (1..=3).contains(&parts.len())
}

/// Reads a `resources:` mapping (a stage's, or one level of `slurm:`).
pub fn parse_resources(node: &Node, what: &str) -> Result<Resources, Vec<Diagnostic>> {
    let resources: Resources = typed(node, what)?;
    check(&resources, node, &[])?;
    Ok(resources)
}

/// Reads the recipe's `slurm:` block: the settings when they have the right
/// shape (even with values Slurm would refuse, so that other checks still
/// see them), and every problem.
pub fn parse_settings(node: &Node) -> (Option<SlurmSettings>, Vec<Diagnostic>) {
    let settings: SlurmSettings = match typed(node, "`slurm`") {
        Ok(s) => s,
        Err(problems) => return (None, problems),
    };
    let mut problems = check(&settings.defaults, node, &["defaults"])
        .err()
        .unwrap_or_default();
    for (op, resources) in &settings.ops {
        problems.extend(
            check(resources, node, &["ops", op])
                .err()
                .unwrap_or_default(),
        );
    }
    (Some(settings), problems)
}

/// The ops `slurm.ops` names that the registry does not have.
pub fn unknown_ops(node: &Node, settings: &SlurmSettings, known: &[&str]) -> Vec<Diagnostic> {
    settings
        .ops
        .keys()
        .filter(|op| !known.contains(&op.as_str()))
        .map(|op| {
            let key = node.find_key(&["ops".to_string(), op.clone()]);
            let mut d = Diagnostic::new(
                "recipe::unknown-op",
                format!("`slurm.ops` names `{op}`, which is not an op"),
                key.map_or(node.span, |k| k.span),
            )
            .label("no such op");
            d.help = Some(match did_you_mean(op, known) {
                Some(hint) => hint,
                None => format!("ops: {}", quoted_list(known)),
            });
            d
        })
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(node: &Node, what: &str) -> Result<T, Vec<Diagnostic>> {
    let json = node.to_json();
    serde_path_to_error::deserialize(&json).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s != "?")
            .collect();
        let (at, _) = node.find_path(&path);
        let span = node
            .find_key(&path)
            .filter(|_| e.inner().to_string().starts_with("unknown field"))
            .map_or(at.span, |k| k.span);
        let place = if path.is_empty() {
            what.to_string()
        } else {
            format!("{what} at `{}`", path.join("."))
        };
        vec![
            Diagnostic::new(
                "recipe::invalid-resources",
                format!("invalid {place}: {}", e.inner()),
                span,
            )
            .label("invalid value")
            .help(
                "resources take `cpus`, `gpus`, `mem`, `time`, `partition`, `account` and `sbatch`",
            ),
        ]
    })
}

fn check(resources: &Resources, node: &Node, at: &[&str]) -> Result<(), Vec<Diagnostic>> {
    let problems: Vec<Diagnostic> = resources
        .problems()
        .into_iter()
        .map(|(field, message)| {
            let mut path: Vec<String> = at.iter().map(|s| s.to_string()).collect();
            path.extend(field.split('.').map(str::to_string));
            let (found, _) = node.find_path(&path);
            Diagnostic::new("recipe::invalid-resources", message, found.span).label("invalid value")
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_fill_each_other_in_and_become_sbatch_arguments() {
        let defaults = Resources {
            cpus: Some(2),
            mem: Some("4G".into()),
            partition: Some("debug".into()),
            ..Resources::default()
        };
        let op = Resources {
            gpus: Some(1),
            mem: Some("32G".into()),
            ..Resources::default()
        };
        let stage = Resources {
            time: Some("1-00:00".into()),
            sbatch: Some(vec!["--qos=high".into()]),
            ..Resources::default()
        };
        let merged = stage.over(&op.over(&defaults));
        assert_eq!(
            merged.sbatch_args(),
            [
                "--cpus-per-task=2",
                "--gpus=1",
                "--mem=32G",
                "--time=1-00:00",
                "--partition=debug",
                "--qos=high"
            ]
        );
    }

    #[test]
    fn slurm_formats_are_checked() {
        for good in ["30", "30:00", "12:00:00", "2-00", "2-12:00", "2-12:00:00"] {
            assert!(valid_time(good), "{good}");
        }
        for bad in ["", "1h", "12:00:00:00", "-5", "a-1"] {
            assert!(!valid_time(bad), "{bad}");
        }
        for good in ["16G", "4000", "512M"] {
            assert!(valid_mem(good), "{good}");
        }
        for bad in ["", "G", "16GB", "1.5G"] {
            assert!(!valid_mem(bad), "{bad}");
        }
    }

    #[test]
    fn problems_point_at_their_value() {
        let source =
            "defaults: { mem: lots, sbatch: [\"--output=x\"] }\nops: { distill: { time: 1h } }\n";
        let (root, _) = crate::yaml::parse(source);
        let (_, errors) = parse_settings(&root.unwrap());
        let texts: Vec<&str> = errors
            .iter()
            .map(|d| &source[d.primary.span.start..d.primary.span.end])
            .collect();
        assert_eq!(texts, ["lots", "\"--output=x\"", "1h"]);
        let (root, _) = crate::yaml::parse("{ cpus: two }");
        let errors = parse_resources(&root.unwrap(), "`resources`").unwrap_err();
        assert!(
            errors[0].message.contains("invalid type"),
            "{}",
            errors[0].message
        );
    }
}
