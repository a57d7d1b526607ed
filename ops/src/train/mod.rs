//! Training: the loop every training op shares (teacher correction,
//! distillation, alignment), its optimizer, schedule, data order, metrics
//! and checkpoints.

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
pub mod trainer;

pub use objective::{CrossEntropy, Distillation, Objective};
pub use trainer::{TrainJob, TrainSummary, train};
