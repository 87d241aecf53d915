//! One module per subcommand.

pub mod bench;
pub mod compare;
pub mod devices;
pub mod estimate;
pub mod eval;
pub mod experiment;
pub mod grow;
pub mod info;
pub mod pareto;
pub mod table;
pub mod train;
