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

use crate::context::Gpu;
use sprout_core::error::Result;

/// Every pipeline a training, evaluation or morphism step uses.
#[derive(Debug, Clone)]
pub struct Kernels {
    pub conv: conv::Conv,
    pub depthwise: depthwise::Depthwise,
    pub bn: batchnorm::BatchNorm,
    pub pool: pool::Pool,
    pub linear: linear::Linear,
    pub loss: loss::Loss,
    pub optim: optimizer::Optimizer,
    pub estimator: estimator::Estimator,
    pub elementwise: elementwise::Elementwise,
}

impl Kernels {
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
        })
    }
}
