//! `sprout`: grow networks by learned morphisms, and the tools to check and show a run.

use clap::{Parser, Subcommand};
use sprout::commands;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "sprout",
    version,
    about = "Grow neural networks by learned morphisms chosen with a Gauss-Newton estimate of the loss change"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Grow a network from a seed by learned morphisms (the paper's Algorithm 1).
    Grow(Box<commands::grow::GrowCommand>),
    /// Gauss-Newton theta vs direct optimisation vs splitting on layer 1 (the paper's Figure 4).
    Compare(commands::compare::CompareArgs),
    /// Estimated vs true loss change of every split candidate (the paper's Figure 3).
    Estimate(commands::estimate::EstimateArgs),
    /// The paper's Tables 1 and 2: every strategy and fixed baselines, retrained from scratch.
    Table(commands::table::TableArgs),
    /// Accuracy against parameters: growth rules, their ablations and the
    /// fixed-width family from a capacity-limited seed, over seeds.
    Pareto(Box<commands::pareto::ParetoArgs>),
    /// Run one line of a sweep's manifest (a Slurm array task).
    RunJob(sprout::sweep::RunJobArgs),
    /// Parameters, MACs and per-layer widths of an architecture.
    Info(commands::info::InfoArgs),
    /// Train a fixed architecture and write a run directory.
    Train(commands::train::TrainArgs),
    /// Reload a run and report its test accuracy.
    Eval(commands::eval::EvalArgs),
    /// Training and inference throughput of the seed networks.
    Bench(commands::bench::BenchArgs),
    /// GPU adapters that --backend gpu can use.
    Devices(commands::devices::DevicesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Grow(a) => commands::grow::run(&a.args, a.force),
        Command::Compare(a) => commands::compare::run(a),
        Command::Estimate(a) => commands::estimate::run(a),
        Command::Table(a) => commands::table::run(a),
        Command::Pareto(a) => commands::pareto::run(a),
        Command::RunJob(a) => sprout::sweep::run_job(a),
        Command::Info(a) => commands::info::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Devices(a) => commands::devices::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sprout::errors::report(&e));
            ExitCode::FAILURE
        }
    }
}
