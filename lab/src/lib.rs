//! sprout's std library, between sprout-core (and sprout-gpu) and the
//! command-line tool: datasets on disk and the embedded subset, the input
//! geometry a dataset gives a network, weight files (safetensors), run
//! directories (claim, lock, atomic swap), the memory check and the SVG
//! figures. Nothing here parses flags or prints; docs/conventions.md
//! "Crates" says what each crate owns.

pub mod data;
pub mod input;
pub mod memory;
pub mod plots;
pub mod run_dir;
pub mod scratch;
pub mod weights;
