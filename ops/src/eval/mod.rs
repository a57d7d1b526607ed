//! Measuring a model: next-token loss and perplexity on token rows and on
//! raw text (with bits per byte), and log-likelihood benchmarks.

/// What an `evaluate` stage stores: every figure, per model, as JSON.
pub const METRICS_FILE: &str = "metrics.json";
/// The same figures as a Markdown table, one column (or row) per model, for
/// people: `run` prints it and the report shows it.
pub const TABLE_FILE: &str = "table.md";

pub mod loss;
pub mod multiple_choice;
pub mod tasks;
pub mod text_perplexity;
pub mod tokenize;
