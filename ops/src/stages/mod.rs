//! The stage operations, one file each: parameters, plan-time checks, run.

pub mod align;
pub mod dataset;
pub mod distill;
pub mod evaluate;
pub mod export;
pub mod fetch;
pub mod importance;
pub mod load_model;
pub mod prune;
pub mod random_init;
pub mod select;
pub mod teacher_correction;
pub mod teacher_logits;
mod training;
mod upstream;

use distillery_engine::{OpRegistry, TypedOp};

/// Ops whose output model has its input model's vocabulary, and the slot
/// that input arrives on (plan-time checks follow a model back through
/// them to the stage that loaded it).
const VOCAB_KEEPING: [(&str, &str); 5] = [
    (prune::Prune::NAME, "model"),
    (distill::Distill::NAME, "student"),
    (teacher_correction::TeacherCorrection::NAME, "model"),
    (align::Align::NAME, "model"),
    (select::Select::NAME, "models"),
];

/// Registers every op of this crate.
pub fn register(registry: &mut OpRegistry) {
    registry
        .register(align::Align)
        .register(dataset::Dataset)
        .register(distill::Distill)
        .register(evaluate::Evaluate)
        .register(export::Export)
        .register(fetch::Fetch)
        .register(importance::Importance)
        .register(load_model::LoadModel)
        .register(prune::Prune)
        .register(random_init::RandomInit)
        .register(select::Select)
        .register(teacher_correction::TeacherCorrection)
        .register(teacher_logits::TeacherLogits);
}
