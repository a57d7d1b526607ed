//! The plan-time checks of `fetch`, each pointing at the parameter at fault.

use super::archive::{self, ArchiveKind};
use super::digest::{self, is_hex_digest};
use super::{Checksum, FetchParams, FileNames, Target, targets};
use distillery_engine::ParamIssue;

pub fn params(p: &FetchParams) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    let given: Vec<&str> = [
        ("url", p.url.is_some()),
        ("pip", p.pip.is_some()),
        ("hf", p.hf.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match given.as_slice() {
        [] => issues.push(
            ParamIssue::at(&[], "a fetch needs a source: `url`, `pip` or `hf`")
                .help("e.g. `url: https://example.org/model.gguf`"),
        ),
        [_] => {}
        [first, rest @ ..] => {
            for other in rest {
                issues.push(
                    ParamIssue::at(
                        &[other],
                        format!(
                            "`{first}` and `{other}` are both given; a fetch has exactly one source"
                        ),
                    )
                    .help(format!("remove `{other}` or `{first}`")),
                );
            }
        }
    }
    if p.sha256.is_none() && p.blake3.is_none() {
        issues.push(
            ParamIssue::at(&[], "a checksum is required: `sha256` or `blake3`")
                .help("add `sha256: <64 hex digits>`; `sha256sum FILE` or `b3sum FILE` prints it"),
        );
    }
    if given.len() > 1 {
        // The other checks depend on which source is meant.
        return issues;
    }
    if let Some(url) = &p.url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        issues.push(ParamIssue::at(
            &["url"],
            "`url` must start with `https://` or `http://`",
        ));
    }
    if let Some(spec) = &p.pip {
        issues.extend(pip_spec(spec));
    }
    if let Some(repo) = &p.hf
        && !valid_repo(repo)
    {
        issues.push(ParamIssue::at(
            &["hf"],
            format!("`{repo}` is not a repository name; expected `owner/name`"),
        ));
    }
    match (&p.hf, &p.revision) {
        (Some(_), Some(rev)) if rev.trim().is_empty() || rev.starts_with('-') => {
            issues.push(ParamIssue::at(
                &["revision"],
                "`revision` must be a commit or tag",
            ));
        }
        (None, Some(_)) => issues.push(ParamIssue::at(
            &["revision"],
            "`revision` is only used with `hf`; remove it",
        )),
        _ => {}
    }
    issues.extend(files(p));
    if p.extract {
        if p.url.is_none() {
            issues.push(ParamIssue::at(
                &["extract"],
                "`extract` is only used with `url`",
            ));
        } else if let Ok(targets) = targets(p)
            && let Some(t) = targets
                .iter()
                .find(|t| ArchiveKind::from_name(&t.stored).is_none())
        {
            issues.push(
                ParamIssue::at(
                    &["extract"],
                    format!(
                        "`{}` is not an archive this op extracts ({})",
                        t.stored,
                        archive::SUPPORTED
                    ),
                )
                .help("name the download with `file:` if the URL hides its type"),
            );
        }
    }
    // Checksums only once the files are known.
    if !given.is_empty() && issues.is_empty() {
        match targets(p) {
            Ok(targets) => issues.extend(checksums(p, &targets)),
            Err(issue) => issues.push(issue),
        }
    }
    issues
}

fn pip_spec(spec: &str) -> Vec<ParamIssue> {
    let pinned = spec.split_once("==").is_some_and(|(name, version)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with(['-', '.'])
            && !version.is_empty()
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+!-".contains(&b))
    });
    if pinned {
        Vec::new()
    } else {
        vec![
            ParamIssue::at(
                &["pip"],
                format!("`{spec}` is not a pinned package; expected `name==version`"),
            )
            .help("e.g. `pip: tinypkg==0.1.0`"),
        ]
    }
}

fn valid_repo(repo: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['-', '.'])
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    matches!(repo.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

/// A name a file can be stored under: one path segment, not `.`/`..`.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// A relative path inside the output, without `..` or empty segments.
fn valid_relative_path(path: &str) -> bool {
    path.split('/').all(valid_file_name)
}

fn files(p: &FetchParams) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    let Some(file) = &p.file else {
        if p.pip.is_some() {
            issues.push(
                ParamIssue::at(
                    &["pip"],
                    "`pip` needs `file`: the path of the file inside the wheel",
                )
                .help("add `file: <package>/<path/inside/the/wheel>`"),
            );
        }
        if p.hf.is_some() {
            issues.push(
                ParamIssue::at(
                    &["hf"],
                    "`hf` needs `file`: one or more files of the repository",
                )
                .help("add `file: config.json` or `file: [config.json, model.safetensors]`"),
            );
        }
        return issues;
    };
    let names = file.names();
    let at = |i: usize| -> Vec<String> {
        match file {
            FileNames::One(_) => vec!["file".into()],
            FileNames::Many(_) => vec!["file".into(), i.to_string()],
        }
    };
    if names.is_empty() {
        issues.push(ParamIssue::at(&["file"], "`file` is an empty list"));
    }
    if names.len() > 1 && p.hf.is_none() {
        issues.push(ParamIssue::at(
            &["file"],
            "only `hf` fetches several files; `url` and `pip` fetch one",
        ));
    }
    for (i, name) in names.iter().enumerate() {
        let path = at(i);
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let ok = if p.url.is_some() {
            valid_file_name(name)
        } else {
            valid_relative_path(name)
        };
        if !ok {
            issues.push(ParamIssue::at(
                &path,
                if p.url.is_some() {
                    format!("`{name}` is not a file name (no folders, not `.` or `..`)")
                } else {
                    format!("`{name}` is not a relative path without `..`")
                },
            ));
        }
        if names[..i].contains(name) {
            issues.push(ParamIssue::at(&path, format!("`{name}` is listed twice")));
        }
    }
    issues
}

/// Hex format of every checksum, per-file keys that name fetched files,
/// and a checksum for every file.
fn checksums(p: &FetchParams, targets: &[Target]) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    let stored: Vec<&str> = targets.iter().map(|t| t.stored.as_str()).collect();
    for (field, checksum) in [("sha256", &p.sha256), ("blake3", &p.blake3)] {
        match checksum {
            None => {}
            Some(Checksum::One(hex)) => {
                if !is_hex_digest(hex) {
                    issues.push(bad_hex(&[field], field, hex));
                }
                if targets.len() > 1 {
                    issues.push(
                        ParamIssue::at(
                            &[field],
                            format!(
                                "{} files are fetched; give `{field}` per file",
                                targets.len()
                            ),
                        )
                        .help(format!("e.g. `{field}: {{ {}: <hex>, ... }}`", stored[0])),
                    );
                }
            }
            Some(Checksum::PerFile(map)) => {
                for (name, hex) in map {
                    if !stored.contains(&name.as_str()) {
                        issues.push(ParamIssue::at(
                            &[field, name],
                            format!(
                                "`{name}` is not a fetched file; they are {}",
                                stored
                                    .iter()
                                    .map(|s| format!("`{s}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    } else if !is_hex_digest(hex) {
                        issues.push(bad_hex(&[field, name], field, hex));
                    }
                }
            }
        }
    }
    if issues.is_empty() {
        for t in targets {
            if t.expected.sha256.is_none() && t.expected.blake3.is_none() {
                issues.push(ParamIssue::at(
                    &[],
                    format!("`{}` has no checksum in `sha256` or `blake3`", t.stored),
                ));
            }
        }
    }
    issues
}

fn bad_hex(path: &[&str], field: &str, hex: &str) -> ParamIssue {
    ParamIssue::at(
        path,
        format!(
            "`{hex}` is not a {field} digest: expected {} hex digits",
            digest::HEX_LEN
        ),
    )
}
