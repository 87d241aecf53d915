//! The sprout command-line tool as a library: the subcommands, their flags
//! and the CLI's error wording, so tests can drive them directly. Data,
//! weight files, run directories and figures live in sprout-lab and are
//! re-exported here under their old paths.

pub mod commands;
pub mod device;
pub mod errors;
pub mod progress;
pub mod slurm;
pub mod sweep;

pub use sprout_lab::{data, input, memory, plots, run_dir, weights};
