//! `dataset`: tokenizes text and chat files into rows of `seq_len` tokens,
//! split into train and held-out by document. The parameters and the
//! pipeline are in [`crate::text`]; the folder layout and its reader are in
//! [`crate::io::dataset`].

use std::path::PathBuf;

use anyhow::Result;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};

use crate::text::{DatasetParams, build_dataset, file_format};

/// The `dataset` op.
pub struct Dataset;

impl TypedOp for Dataset {
    type Params = DatasetParams;
    const NAME: &'static str = "dataset";
    // 2: chat conversations get a loss mask on the assistant replies.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "Tokenizes JSONL, text or chat files into fixed-length rows of token ids, split into train and held-out by document; chat conversations get a loss mask on the assistant replies.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("tokenizer", ArtifactKind::Model)]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Dataset
    }

    fn check(&self, p: &DatasetParams, _ctx: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.seq_len < 2 {
            issues.push(ParamIssue::at(
                &["seq_len"],
                format!("`seq_len` must be at least 2, found {}", p.seq_len),
            ));
        }
        if !(p.heldout_percent.is_finite() && (0.0..=50.0).contains(&p.heldout_percent)) {
            issues.push(ParamIssue::at(
                &["heldout_percent"],
                format!(
                    "`heldout_percent` must be between 0 and 50, found {}",
                    p.heldout_percent
                ),
            ));
        }
        if p.files.is_empty() {
            issues.push(
                ParamIssue::at(&["files"], "`files` must name at least one file")
                    .help("e.g. `files: [data/train.jsonl.zst]`"),
            );
        }
        for (i, file) in p.files.iter().enumerate() {
            let index = i.to_string();
            if let Err(message) = file_format(file, p.format) {
                issues.push(
                    ParamIssue::at(&["files", &index], message)
                        .help("set `format: jsonl` or `format: text`"),
                );
            }
        }
        if p.max_documents == Some(0) {
            issues.push(ParamIssue::at(
                &["max_documents"],
                "`max_documents` must be at least 1 (leave it out for no limit)",
            ));
        }
        if p.text_field.is_empty() {
            issues.push(ParamIssue::at(&["text_field"], "`text_field` is empty"));
        }
        if p.id_field.is_empty() {
            issues.push(ParamIssue::at(&["id_field"], "`id_field` is empty"));
        }
        if let Some(message) = p.loss_on_conflict() {
            issues.push(
                ParamIssue::at(&["loss_on"], message)
                    .help("leave `loss_on` out: plain text has no turns, every token is trained"),
            );
        }
        issues
    }

    fn external_files(&self, p: &DatasetParams) -> Vec<PathBuf> {
        p.files.clone()
    }

    fn run(&self, p: DatasetParams, ctx: &RunContext) -> Result<()> {
        build_dataset(
            &p,
            ctx.input("tokenizer")?,
            &ctx.recipe_dir,
            &ctx.output_dir,
            ctx.progress,
        )
        .map(|_| ())
    }
}
