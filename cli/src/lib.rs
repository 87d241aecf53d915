//! The sprout command-line tool as a library: data loading, weight files,
//! run directories and the subcommands, so tests can drive them directly.

pub mod commands;
pub mod data;
pub mod device;
pub mod errors;
pub mod input;
pub mod memory;
pub mod plots;
pub mod progress;
pub mod run_dir;
pub mod slurm;
pub mod sweep;
pub mod weights;
