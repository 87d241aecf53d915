//! # sprout-core
//!
//! Grows convolutional networks from a small seed by learned network
//! morphisms, choosing where to grow with a Gauss-Newton estimate of the loss
//! change (Lawton, Galstyan, Ver Steeg: "Learning Morphisms with Gauss-Newton
//! Approximation for Growing Networks").
//!
//! This crate is `no_std` + `alloc` and does no I/O: architectures
//! ([`arch`]), parameters ([`network`]), reference CPU kernels with backward
//! passes ([`kernels`]), the operations every engine provides ([`engine`]),
//! the network walk written once over them ([`walk`]), the CPU engine
//! ([`model`]), optimizers
//! ([`optim`]), the [`backend::Backend`] trait with its CPU implementation,
//! and dataset parsing from bytes ([`data`]). The default `std` feature adds
//! runtime SIMD detection in the GEMM and data parallelism on all cores.
//! The optional `ndarray` feature (`no_std` too) adds
//! `estimator::LayerBatch::from_views`, the estimator's input as ndarray views;
//! [`estimator`]'s docs show the estimator fed from another framework's buffers.
#![no_std]
#![warn(missing_debug_implementations)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod arch;
pub mod backend;
pub mod data;
mod embed;
pub mod engine;
pub mod error;
pub mod estimator;
pub mod grow;
pub mod kernels;
pub mod layer_estimate;
pub mod learn;
pub mod model;
pub mod morph;
pub mod network;
pub mod optim;
pub(crate) mod par;
pub mod refine;
pub mod rng;
pub mod select;
pub mod splitting;
pub mod train;
pub mod walk;

pub use arch::{Arch, Family};
pub use backend::{Backend, BatchStats, CpuBackend};
pub use error::{Error, Result};
pub use network::Network;
