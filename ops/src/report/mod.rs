//! `distillery report`: one self-contained HTML page about a recipe's run
//! (inline CSS and SVG, no script, nothing fetched, so the file can be
//! mailed, archived or opened offline): the stage graph with cache state and
//! run times, models and their shapes, training curves and evaluation
//! tables.
//!
//! [`collect`] reads what the store holds about each stage, through the same
//! artifact types the ops write ([`LlamaConfig`], [`PruningReport`],
//! [`MetricsLine`], [`TrainSummary`]); [`render`] turns that into the page
//! with pure functions.

mod charts;
mod collect;
mod dag;
pub mod format;
mod page;
mod tables;

pub use charts::{
    Series, heldout_comparison_chart, heldout_loss_chart, line_chart, loss_chart, lr_chart,
    nice_ticks, perplexity_chart,
};
pub use collect::collect;
pub use dag::dag_svg;
pub use page::render;
pub use tables::markdown_table;

use crate::model::LlamaConfig;
use crate::prune::report::PruningReport;
use crate::train::metrics::{MetricsLine, TrainSummary};

/// Where a stage stands in the store.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStatus {
    /// Published: the next run is a cache hit.
    Stored,
    /// Not published, but its scratch folder has progress; `recent` when the
    /// progress changed in the last minutes (probably still running).
    Partial { recent: bool },
    /// Not published; why it would run.
    NotRun(String),
}

/// Everything the page shows about one stage.
#[derive(Debug, Clone)]
pub struct StageView {
    pub name: String,
    pub op: String,
    pub key: String,
    pub status: StageStatus,
    /// Seconds the stage took when it was computed.
    pub duration_secs: Option<f64>,
    /// When it was computed, as text.
    pub created: Option<String>,
    /// Bytes of its published output.
    pub output_bytes: Option<u64>,
    /// The config of a Model output.
    pub model: Option<LlamaConfig>,
    /// A pruned model's `pruning.json`: the method and the shape before.
    pub pruning: Option<PruningReport>,
    /// A training stage's `metrics.jsonl`, as far as it got.
    pub metrics: Vec<MetricsLine>,
    /// A finished training stage's `training.json`.
    pub training: Option<TrainSummary>,
    /// An evaluation's `table.md`.
    pub eval_table: Option<String>,
}

impl StageView {
    pub fn new(name: &str, op: &str, key: &str, status: StageStatus) -> Self {
        Self {
            name: name.into(),
            op: op.into(),
            key: key.into(),
            status,
            duration_secs: None,
            created: None,
            output_bytes: None,
            model: None,
            pruning: None,
            metrics: Vec::new(),
            training: None,
            eval_table: None,
        }
    }
}

/// The whole page's content. `stages` is in topological order; `edges` are
/// (producer, consumer) indices into it.
#[derive(Debug, Clone)]
pub struct Report {
    pub recipe: String,
    pub recipe_path: String,
    pub store: String,
    pub generated: String,
    pub stages: Vec<StageView>,
    pub edges: Vec<(usize, usize)>,
}
