//! A teacher's logits over a dataset's training rows, computed once and
//! kept sparse (top-K per position plus the log-sum-exp and the tail's
//! mass), so that many students distil from them without running the
//! teacher again: [`select`] picks a position's kept tokens, [`store`]
//! writes and reads the `teacher_logits` stage's folder, and [`batch`]
//! turns stored rows into the tensors the sparse KD loss takes.

pub mod batch;
pub mod select;
pub mod store;

pub use select::{Selector, TopK};
pub use store::{Header, StoredRow, TeacherLogitsStore, tokens_digest};
