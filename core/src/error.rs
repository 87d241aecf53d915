//! The error type of sprout-core: every failure on user input is a value that
//! says what was wrong, never a panic.

use alloc::string::String;
use core::fmt;

/// What went wrong, with enough context to name the offending input.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// A dataset file's bytes are not what its format requires.
    Data(String),
    /// An architecture that cannot be built (unknown family, bad width, shape too small).
    Arch(String),
    /// Parameters or buffers whose shapes do not match the architecture.
    Shape(String),
    /// A configuration value out of range (learning rate, lambda, fraction, ...).
    Config(String),
    /// Training diverged: the loss became NaN or infinite.
    NonFinite(String),
    /// A backend (for example a GPU device) failed.
    Backend(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Data(m) => write!(f, "invalid data: {m}"),
            Error::Arch(m) => write!(f, "invalid architecture: {m}"),
            Error::Shape(m) => write!(f, "shape mismatch: {m}"),
            Error::Config(m) => write!(f, "invalid setting: {m}"),
            Error::NonFinite(m) => write!(f, "training diverged: {m}"),
            Error::Backend(m) => write!(f, "backend failure: {m}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Result with sprout-core's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
