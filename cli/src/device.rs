//! Which engine runs the training and morphism steps: `--backend cpu|gpu`
//! and `--adapter NAME`, and the one place a backend is built from them.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use sprout_core::backend::{Backend, CpuBackend};
use sprout_gpu::GpuBackend;

/// The engines sprout can run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// sprout-core's kernels on all CPU cores.
    #[default]
    Cpu,
    /// WGSL compute shaders through wgpu (Vulkan, Metal, DX12).
    Gpu,
}

impl BackendKind {
    /// The name `--backend` takes (and a sweep's manifest stores).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Gpu => "gpu",
        }
    }
}

/// Flags choosing the engine.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceArgs {
    /// Engine for training, evaluation and morphism steps.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// With --backend gpu: the adapter whose name contains this
    /// (case-insensitive; see `sprout devices`) [default: WGPU_ADAPTER_NAME if
    /// set, else the best one].
    #[arg(long)]
    pub adapter: Option<String>,
}

impl DeviceArgs {
    /// A backend for batches of up to `batch` images.
    pub fn open(&self, batch: usize) -> Result<Box<dyn Backend>> {
        Ok(self.open_described(batch)?.0)
    }

    /// A backend and how reports name it: `cpu` or `gpu: <adapter> (<api>)`.
    pub fn open_described(&self, batch: usize) -> Result<(Box<dyn Backend>, String)> {
        match self.backend {
            BackendKind::Cpu => {
                if let Some(a) = &self.adapter {
                    bail!("--adapter {a} needs --backend gpu");
                }
                Ok((Box::new(CpuBackend::new(batch)), "cpu".into()))
            }
            BackendKind::Gpu => {
                let gpu =
                    GpuBackend::new(batch, self.adapter.as_deref()).map_err(crate::errors::cli)?;
                let a = gpu.adapter();
                Ok((Box::new(gpu), format!("gpu: {} ({})", a.name, a.backend)))
            }
        }
    }
}
