//! Training: the loop every training op shares (teacher correction,
//! distillation, alignment), the optimizer step it repeats, its optimizer,
//! schedule, data order, metrics and checkpoints.

pub mod adamw;
pub mod params;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, GradientSum, StepReport};
pub use params::TrainParams;
pub use schedule::Schedule;
pub mod checkpoint;
pub mod data;
pub mod metrics;
pub mod objective;
pub mod step;
pub mod trainer;

pub use metrics::TrainSummary;
pub use objective::{CrossEntropy, Distillation, Objective, StoredDistillation};
pub use step::{StepOutcome, StepTimings, TrainStep};
pub use trainer::{TrainJob, train};
