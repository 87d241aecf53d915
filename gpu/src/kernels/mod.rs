//! Kernel families, one per folder of `gpu/shaders/`, forward and backward side
//! by side. Each struct owns its pipelines (built once per device) and checks
//! shapes before it records a dispatch.

pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod estimator;
pub mod linear;
pub mod loss;
pub mod optimizer;
pub mod pool;
pub mod splitting;

use crate::context::Gpu;
use sprout_core::error::Result;

/// Every pipeline a training, evaluation or morphism step uses.
#[derive(Debug, Clone)]
pub struct Kernels {
    /// Convolutions.
    pub conv: conv::Conv,
    /// Depthwise convolutions.
    pub depthwise: depthwise::Depthwise,
    /// Batch normalisation.
    pub bn: batchnorm::BatchNorm,
    /// Max-pool and global average pool.
    pub pool: pool::Pool,
    /// The linear head.
    pub linear: linear::Linear,
    /// Softmax cross-entropy.
    pub loss: loss::Loss,
    /// SGD, Adam and the morphism-state updates.
    pub optim: optimizer::Optimizer,
    /// The Gauss-Newton estimator.
    pub estimator: estimator::Estimator,
    /// Elementwise ops (ReLU, copies, fills).
    pub elementwise: elementwise::Elementwise,
    /// The splitting matrix's products.
    pub splitting: splitting::Splitting,
}

impl Kernels {
    /// Builds every pipeline on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Kernels> {
        Ok(Kernels {
            conv: conv::Conv::new(gpu)?,
            depthwise: depthwise::Depthwise::new(gpu)?,
            bn: batchnorm::BatchNorm::new(gpu)?,
            pool: pool::Pool::new(gpu)?,
            linear: linear::Linear::new(gpu)?,
            loss: loss::Loss::new(gpu)?,
            optim: optimizer::Optimizer::new(gpu)?,
            estimator: estimator::Estimator::new(gpu)?,
            elementwise: elementwise::Elementwise::new(gpu)?,
            splitting: splitting::Splitting::new(gpu)?,
        })
    }
}
