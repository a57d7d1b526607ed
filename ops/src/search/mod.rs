//! Architecture search (Minitron's, ../shared/METHOD.md section 8): the
//! candidates near a parameter budget. Each one becomes a `prune` stage
//! through a recipe's `matrix:`.
mod space;

pub use space::{Candidate, SearchSpace};
