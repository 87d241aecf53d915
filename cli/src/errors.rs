//! sprout-core's errors in the CLI's terms: a configuration [`Field`] is
//! named by the flag that sets it, a backend's [`Remedy`] names the flags
//! that help, and the core error stays the source of the `anyhow::Error`
//! (`e.chain().find_map(|c| c.downcast_ref::<sprout_core::Error>())`
//! finds it).

use sprout_core::error::{Field, Remedy};
use sprout_core::Error as CoreError;
use std::fmt;

/// The `sprout grow` flag that sets `field` (the table and pareto sweeps
/// share these names); the field's path for one without a flag.
pub fn grow_flag(field: Field) -> &'static str {
    match field {
        Field::Phases => "--phases",
        Field::TrainEpochs => "--phase-epochs",
        Field::MorphEpochs => "--morph-epochs",
        Field::Batch => "--batch",
        Field::ThetaInit => "--theta-init",
        Field::EmaAlpha => "--ema-alpha",
        Field::ThetaMax => "--theta-max",
        Field::SplitEpsilon => "--split-epsilon",
        Field::Curvature => "--curvature",
        Field::LambdaParams => "--lambda-params",
        Field::LambdaMacs => "--lambda-macs",
        Field::GrowFraction => "--grow-fraction",
        Field::MorphMethod => "--strategy",
        other => other.path(),
    }
}

/// What to do about a backend failure, in flags.
fn remedy(r: Remedy) -> String {
    match r {
        Remedy::CpuBackend => "use --backend cpu".into(),
        Remedy::SmallerBatch => "use a smaller --batch".into(),
        Remedy::SmallerBatchOrNetwork => "use a smaller --batch or network".into(),
        Remedy::LessMemory => "use a smaller --batch or network, or --backend cpu".into(),
        Remedy::Restart => "restart, or use --backend cpu".into(),
        Remedy::InstallDriver => {
            format!("{}, or use --backend cpu", sprout_core::error::DRIVER_HINT)
        }
        other => other.to_string(),
    }
}

/// The one-line message for `e`, with the flags of `sprout grow`.
pub fn message(e: &CoreError) -> String {
    message_with(e, grow_flag)
}

/// The one-line message for `e`, naming fields by `flag` (for a command
/// whose flags set the fields under other names).
pub fn message_with(e: &CoreError, flag: fn(Field) -> &'static str) -> String {
    match e {
        CoreError::Config {
            field,
            requirement,
            value,
        } => format!("{} must be {requirement}, got {value}", flag(*field)),
        CoreError::Unsupported {
            field,
            value,
            backend,
        } => format!(
            "{} {value} is not supported on the {backend} backend; use --backend cpu",
            flag(*field)
        ),
        CoreError::Backend {
            message,
            remedy: Some(r),
        } => format!("backend failure: {message}; {}", remedy(*r)),
        e => e.to_string(),
    }
}

/// A core error with its message in the CLI's terms; the core error is its
/// [`source`](std::error::Error::source). [`report`] prints the message and
/// not the source again.
#[derive(Debug)]
pub struct Flagged {
    message: String,
    source: CoreError,
}

impl Flagged {
    /// `source` said as `message`.
    pub fn new(message: String, source: CoreError) -> Flagged {
        Flagged { message, source }
    }

    /// The core error.
    pub fn core(&self) -> &CoreError {
        &self.source
    }
}

impl fmt::Display for Flagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Flagged {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `e` as a CLI error: [`message`] over the core error as its source.
pub fn cli(e: CoreError) -> anyhow::Error {
    cli_with(e, grow_flag)
}

/// [`cli`] for a command whose flags are named by `flag`.
pub fn cli_with(e: CoreError, flag: fn(Field) -> &'static str) -> anyhow::Error {
    anyhow::Error::new(Flagged::new(message_with(&e, flag), e))
}

/// The line `sprout` prints for `e`: its chain joined by `: `, core errors
/// said in flags, stopping at a [`Flagged`] (whose source it already says).
pub fn report(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Flagged>() {
            parts.push(f.to_string());
            break;
        }
        match cause.downcast_ref::<CoreError>() {
            Some(core) => parts.push(message(core)),
            None => parts.push(cause.to_string()),
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_flag_and_keep_the_source() {
        let core = CoreError::config(Field::MorphEpochs, "at least 1", 0);
        let e = cli(core.clone()).context("grow");
        assert_eq!(report(&e), "grow: --morph-epochs must be at least 1, got 0");
        let source = e.chain().find_map(|c| c.downcast_ref::<CoreError>());
        assert_eq!(source, Some(&core));
        // A plain `?` is said in flags too.
        let e = anyhow::Error::new(core).context("grow");
        assert_eq!(report(&e), "grow: --morph-epochs must be at least 1, got 0");
        let e = cli(CoreError::backend_with(
            "GPU out of memory",
            Remedy::LessMemory,
        ));
        assert_eq!(
            report(&e),
            "backend failure: GPU out of memory; use a smaller --batch or network, or --backend cpu"
        );
    }
}
