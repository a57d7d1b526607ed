//! The plan-time checks of `evaluate`, each pointing at the parameter at
//! fault: something to measure, sizes above zero, unique task and text
//! names, shots with a file to draw them from, a reference among the
//! models.

use super::EvaluateParams;
use distillery_engine::ParamIssue;
use std::collections::BTreeMap;

/// Every problem of `p`; `has_data` when a dataset is bound to `data`,
/// `models` the stages bound to `models`.
pub fn params(p: &EvaluateParams, has_data: bool, models: &[&str]) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    if let Some(reference) = &p.reference
        && !models.contains(&reference.as_str())
    {
        issues.push(
            ParamIssue::at(
                &["reference"],
                format!("`{reference}` is not one of the evaluated models"),
            )
            .help(format!(
                "name a stage bound to `models`: {}",
                models
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    }
    if p.resamples < 100 {
        issues.push(ParamIssue::at(
            &["resamples"],
            format!(
                "`resamples` must be at least 100 for a 95% interval, found {}",
                p.resamples
            ),
        ));
    }
    if !has_data && p.tasks.is_empty() && p.texts.is_empty() {
        issues.push(
            ParamIssue::at(&[], "nothing to evaluate: no `data` input, `tasks` or `texts`")
                .help("bind a dataset with `inputs: { data: <stage> }`, or list `tasks: [{ path: <benchmark.jsonl> }]` or `texts: [{ path: <file.txt> }]`"),
        );
    }
    if p.rows == 0 {
        issues.push(ParamIssue::at(&["rows"], "`rows` must be at least 1"));
    }
    if p.batch == 0 {
        issues.push(ParamIssue::at(&["batch"], "`batch` must be at least 1"));
    }
    if p.seq_len.is_some_and(|s| s < 2) {
        issues.push(ParamIssue::at(&["seq_len"], "`seq_len` must be at least 2"));
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, t) in p.tasks.iter().enumerate() {
        let index = i.to_string();
        let at = |field: &'static str| vec!["tasks", index.as_str(), field];
        let name = t.name();
        if name.is_empty() {
            issues.push(ParamIssue::at(
                &at("name"),
                "a task's `name` cannot be empty",
            ));
        } else if let Some(first) = names.insert(name.clone(), i) {
            issues.push(
                ParamIssue::at(
                    &["tasks", &index],
                    format!("tasks {first} and {i} are both named `{name}`"),
                )
                .help("give one of them another `name`"),
            );
        }
        if t.limit == Some(0) {
            issues.push(ParamIssue::at(
                &at("limit"),
                "`limit` must be at least 1 (leave it out to score every item)",
            ));
        }
        match (t.shots, &t.dev) {
            (0, Some(_)) => issues.push(
                ParamIssue::at(&at("dev"), "`dev` is only read when `shots` is above 0")
                    .help("set `shots`, or remove `dev`"),
            ),
            (s, None) if s > 0 => issues.push(
                ParamIssue::at(&at("shots"), format!("{s} shots need a `dev` file to draw them from"))
                    .help("add `dev: <file>` (the task's own file works: an item is never its own example)"),
            ),
            _ => {}
        }
    }
    let mut text_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, t) in p.texts.iter().enumerate() {
        let index = i.to_string();
        let name = t.name();
        if t.name.as_deref() == Some("") {
            issues.push(ParamIssue::at(
                &["texts", &index, "name"],
                "a text's `name` cannot be empty",
            ));
        } else if let Some(first) = text_names.insert(name.clone(), i) {
            issues.push(
                ParamIssue::at(
                    &["texts", &index],
                    format!("texts {first} and {i} are both named `{name}`"),
                )
                .help("give one of them another `name`"),
            );
        }
        if t.seq_len < 2 {
            issues.push(ParamIssue::at(
                &["texts", &index, "seq_len"],
                format!("`seq_len` must be at least 2, found {}", t.seq_len),
            ));
        }
        if t.windows == Some(0) {
            issues.push(ParamIssue::at(
                &["texts", &index, "windows"],
                "`windows` must be at least 1 (leave it out to score the whole text)",
            ));
        }
    }
    issues
}
