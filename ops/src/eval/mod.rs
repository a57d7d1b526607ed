//! Measuring a model on data: next-token loss and perplexity.
pub mod loss;
