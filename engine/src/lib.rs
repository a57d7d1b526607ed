//! The Distillery engine: recipes in YAML become a validated graph of
//! stages; each stage runs at most once per content key, into a store that
//! survives crashes and concurrent runs. It knows nothing about models: ops
//! register themselves into an [`OpRegistry`].

pub mod config;
pub mod diagnostic;
pub mod files;
pub mod fsutil;
pub mod graph;
pub mod interrupt;
pub mod key;
pub mod lock;
pub mod matrix;
pub mod op;
pub mod outcome;
pub mod overrides;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod remote;
pub mod run;
pub mod schema;
pub mod shared_lock;
pub mod slurm;
pub mod store;
pub mod testing;
pub mod validate;
pub mod vars;
pub mod yaml;

pub use diagnostic::{Diagnostic, Span};
pub use op::{
    ArtifactKind, CheckContext, Device, Op, OpRegistry, ParamIssue, RunContext, Slot, TypedOp,
};
pub use plan::{Plan, Selection};
pub use progress::Progress;
pub use store::Store;
pub use validate::{Pipeline, load, load_with_overrides, validate};
