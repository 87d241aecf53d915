//! Datasets: parsing the real on-disk formats from bytes, and assembling
//! training and evaluation batches.
//!
//! - [`idx`] parses the IDX format of MNIST and Fashion-MNIST (the files
//!   uncompressed; gzip is opened by the caller).
//! - [`cifar`] parses the CIFAR-10 and CIFAR-100 binary formats.
//! - [`Dataset`] holds raw `u8` pixels in NCHW order with one label per image;
//!   [`Normalization`] holds per-channel mean and standard deviation.
//! - [`fill_batch`] writes normalised `f32` batches, optionally augmented with
//!   a random crop from a zero-padded image and a horizontal flip.
//!
//! Parsers never panic on malformed input: every defect is an
//! [`Error::Data`](crate::error::Error::Data) naming the file part and what is
//! wrong.

pub mod cifar;
pub mod idx;

mod batches;
mod dataset;

pub use batches::*;
pub use dataset::*;
