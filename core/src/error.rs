//! The error type of sprout-core: every failure on user input is a value that
//! says what was wrong, never a panic.
//!
//! Errors are typed so that a front end can say it in its own terms: a
//! configuration error names the configuration [`Field`] (a path into
//! [`GrowConfig`](crate::grow::GrowConfig), such as `select.lambda_params`),
//! never a command-line flag, and a backend failure carries a [`Remedy`]
//! rather than naming one; the `sprout` CLI maps both to its flags. Shape
//! errors carry what was compared. [`Error`] implements
//! [`core::error::Error`] (and so `std::error::Error`) in `no_std` builds too.

use alloc::string::String;
use core::fmt;

/// What went wrong, with enough context to name the offending input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A dataset file's bytes are not what its format requires; the message
    /// names the file part (`IDX labels`, `CIFAR-10 file 2`, ...).
    #[error("invalid data: {0}")]
    Data(String),
    /// An architecture that cannot be built (unknown family, bad width, shape too small).
    #[error("invalid architecture: {0}")]
    Arch(String),
    /// A count of values (a tensor's, a buffer's, a list's) that differs from
    /// the one the architecture or the other inputs imply.
    #[error("shape mismatch: {what}: expected {expected}, got {got}")]
    Shape {
        /// What was counted, e.g. `tensor layers.0.weight [16, 3, 3, 3] values`.
        what: String,
        /// The count required.
        expected: usize,
        /// The count found.
        got: usize,
    },
    /// Parameters, buffers or state that do not fit the architecture, where
    /// no single count says how (described in words).
    #[error("shape mismatch: {0}")]
    Mismatch(String),
    /// A configuration value out of range.
    #[error("invalid setting: {field} must be {requirement}, got {value}")]
    Config {
        /// The configuration field that holds the value.
        field: Field,
        /// What the value must be, e.g. `at least 1` or `in (0, 1]`.
        requirement: &'static str,
        /// The value given, formatted.
        value: String,
    },
    /// A configuration value this backend does not implement.
    #[error("{field} {value} is not supported on the {backend} backend")]
    Unsupported {
        /// The configuration field that holds the value.
        field: Field,
        /// The value, as the configuration spells it (`exact-logits`).
        value: &'static str,
        /// The backend that refused it (`gpu`).
        backend: &'static str,
    },
    /// A list of morphisms that cannot be applied to the network (a layer or
    /// channel it does not have, two for one channel, a layer pruned empty).
    #[error("invalid morphism: {0}")]
    Morphism(String),
    /// Training diverged: the loss became NaN or infinite.
    #[error("training diverged: {0}")]
    NonFinite(String),
    /// A backend (for example a GPU device) failed.
    #[error("backend failure: {message}{}", Hint(.remedy))]
    Backend {
        /// What failed.
        message: String,
        /// What the user can do about it, when something can be done.
        remedy: Option<Remedy>,
    },
}

impl Error {
    /// A [`Error::Config`] for `field`, whose `value` is not `requirement`.
    pub fn config(field: Field, requirement: &'static str, value: impl fmt::Display) -> Error {
        Error::Config {
            field,
            requirement,
            value: alloc::format!("{value}"),
        }
    }

    /// A [`Error::Shape`]: `what` has `got` values where `expected` are needed.
    pub fn shape(what: impl Into<String>, expected: usize, got: usize) -> Error {
        Error::Shape {
            what: what.into(),
            expected,
            got,
        }
    }

    /// A [`Error::Backend`] with nothing the user can do about it.
    pub fn backend(message: impl Into<String>) -> Error {
        Error::Backend {
            message: message.into(),
            remedy: None,
        }
    }

    /// A [`Error::Backend`] with what the user can do about it.
    pub fn backend_with(message: impl Into<String>, remedy: Remedy) -> Error {
        Error::Backend {
            message: message.into(),
            remedy: Some(remedy),
        }
    }

    /// The configuration field this error is about, if any.
    pub fn field(&self) -> Option<Field> {
        match self {
            Error::Config { field, .. } | Error::Unsupported { field, .. } => Some(*field),
            _ => None,
        }
    }
}

/// A field of the growth configuration, named by its path in
/// [`GrowConfig`](crate::grow::GrowConfig) (`select.` for
/// [`SelectConfig`](crate::select::SelectConfig), `morph.` for
/// [`MorphConfig`](crate::learn::MorphConfig)); [`Field::path`] spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `phases`: growth phases.
    Phases,
    /// `train_epochs`: training epochs per phase.
    TrainEpochs,
    /// `morph_epochs`: morphism-learning epochs per phase.
    MorphEpochs,
    /// `batch`: mini-batch size.
    Batch,
    /// `theta_init`: initial |theta| relative to |w_in|.
    ThetaInit,
    /// `ema_alpha`: EMA weight of each mini-batch estimate.
    EmaAlpha,
    /// `theta_max`: the trust region for learned theta.
    ThetaMax,
    /// `split_epsilon`: the splitting baseline's step.
    SplitEpsilon,
    /// `curvature`: the estimate's quadratic term.
    Curvature,
    /// `select.lambda_params`: the parameter-cost weight.
    LambdaParams,
    /// `select.lambda_macs`: the MAC-cost weight.
    LambdaMacs,
    /// `select.fraction`: the fraction of candidates grown per phase.
    GrowFraction,
    /// `morph.method`: how morphisms are learned (Gauss-Newton, direct, splitting).
    MorphMethod,
}

impl Field {
    /// The field's path in [`GrowConfig`](crate::grow::GrowConfig), e.g. `select.lambda_params`.
    pub fn path(self) -> &'static str {
        match self {
            Field::Phases => "phases",
            Field::TrainEpochs => "train_epochs",
            Field::MorphEpochs => "morph_epochs",
            Field::Batch => "batch",
            Field::ThetaInit => "theta_init",
            Field::EmaAlpha => "ema_alpha",
            Field::ThetaMax => "theta_max",
            Field::SplitEpsilon => "split_epsilon",
            Field::Curvature => "curvature",
            Field::LambdaParams => "select.lambda_params",
            Field::LambdaMacs => "select.lambda_macs",
            Field::GrowFraction => "select.fraction",
            Field::MorphMethod => "morph.method",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// What the user can do about a backend failure; front ends may say it in
/// their own terms (the CLI names its flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Remedy {
    /// Use the CPU backend.
    CpuBackend,
    /// Use a smaller batch.
    SmallerBatch,
    /// Use a smaller batch or network.
    SmallerBatchOrNetwork,
    /// Use a smaller batch or network, or the CPU backend.
    LessMemory,
    /// Restart, or use the CPU backend.
    Restart,
    /// Install a GPU driver, or use the CPU backend.
    InstallDriver,
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Remedy::CpuBackend => "use the CPU backend",
            Remedy::SmallerBatch => "use a smaller batch",
            Remedy::SmallerBatchOrNetwork => "use a smaller batch or network",
            Remedy::LessMemory => "use a smaller batch or network, or the CPU backend",
            Remedy::Restart => "restart, or use the CPU backend",
            Remedy::InstallDriver => return write!(f, "{DRIVER_HINT}, or use the CPU backend"),
        })
    }
}

/// How to install a software Vulkan driver, for [`Remedy::InstallDriver`].
pub const DRIVER_HINT: &str = "install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers libvulkan1` for software rendering";

/// `; remedy`, or nothing.
struct Hint<'a>(&'a Option<Remedy>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "; {r}"),
            None => Ok(()),
        }
    }
}

/// Result with sprout-core's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn messages_name_fields_and_remedies_without_flags() {
        let e = Error::config(Field::MorphEpochs, "at least 1", 0);
        assert_eq!(
            e.to_string(),
            "invalid setting: morph_epochs must be at least 1, got 0"
        );
        assert_eq!(e.field(), Some(Field::MorphEpochs));
        let e = Error::shape("parameter tensors", 58, 57);
        assert_eq!(
            e.to_string(),
            "shape mismatch: parameter tensors: expected 58, got 57"
        );
        let e = Error::backend_with("GPU out of memory", Remedy::LessMemory);
        assert_eq!(
            e.to_string(),
            "backend failure: GPU out of memory; use a smaller batch or network, or the CPU backend"
        );
        assert!(!e.to_string().contains("--"));
    }
}
