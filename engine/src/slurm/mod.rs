//! Running stages as Slurm jobs: one `sbatch` job per stage, the store on a
//! filesystem every node shares.

pub mod executor;
pub mod jobs;
pub mod resources;
