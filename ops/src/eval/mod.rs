//! Measuring a model: next-token loss and perplexity on token rows and on
//! raw text (with bits per byte), and log-likelihood benchmarks.

pub mod loss;
pub mod multiple_choice;
pub mod paired;
pub mod results;
pub mod tasks;
pub mod text_perplexity;
pub mod tokenize;

pub use results::{RESULTS_FILE, TABLE_FILE};
