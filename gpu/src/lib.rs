//! # sprout-gpu
//!
//! A [`sprout_core::Backend`] that runs every training, evaluation and
//! morphism-learning step as WGSL compute shaders through wgpu (Vulkan,
//! Metal, DX12; Mesa's lavapipe on machines without a GPU). It requests
//! wgpu's default limits only, so what runs on one conforming device runs on
//! any. Parameters stay on the device; a step sends back only its loss and
//! correct count.

#![warn(missing_docs)]

pub mod backend;
pub mod context;
pub(crate) mod graph;
pub mod kernel;
pub mod kernels;
pub mod layout;
pub(crate) mod morph;

pub use backend::GpuBackend;
pub use context::{adapter_available, adapter_or_skip, adapters, AdapterSummary, Gpu};
