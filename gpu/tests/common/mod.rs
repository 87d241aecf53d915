//! Shared test setup: a device, every pipeline, NaN-poisoned outputs and a
//! tolerance check against the CPU reference.
#![allow(dead_code)]

use sprout_core::rng::Rng;
use sprout_gpu::kernel::{submit, Op, View};
use sprout_gpu::kernels::Kernels;
use sprout_gpu::Gpu;

/// Whether a test that needs a GPU adapter can run (see
/// [`sprout_gpu::adapter_or_skip`]).
#[allow(unused_imports)]
pub use sprout_gpu::adapter_or_skip as gpu_available;

pub struct Harness {
    pub gpu: Gpu,
    pub k: Kernels,
}

impl Harness {
    /// A device with every pipeline, or `None` (the test skips) without an
    /// adapter; see [`gpu_available`].
    pub fn new() -> Option<Harness> {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        if !gpu_available() {
            return None;
        }
        let gpu = Gpu::new(None).expect("a GPU adapter (lavapipe on CI)");
        let k = Kernels::new(&gpu).expect("kernels build");
        Some(Harness { gpu, k })
    }

    pub fn upload(&self, data: &[f32]) -> View {
        self.gpu.upload("test input", data).expect("upload")
    }

    pub fn upload_u32(&self, data: &[u32]) -> View {
        let v = self.gpu.buffer("test labels", data.len()).expect("buffer");
        self.gpu.write_u32(&v, data).expect("write");
        v
    }

    /// An output buffer full of NaN, so that any element a kernel fails to write shows.
    pub fn poisoned(&self, len: usize) -> View {
        self.upload(&vec![f32::NAN; len])
    }

    pub fn run(&self, ops: &[Op]) {
        submit(&self.gpu, ops, None).expect("submit");
    }

    pub fn read(&self, v: &View, len: usize) -> Vec<f32> {
        self.gpu.read(v, len).expect("read")
    }
}

pub fn normal(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.normal()).collect()
}

/// `|got - want| <= rtol * (|want| + mean |want|)` everywhere (NaN fails).
pub fn close(name: &str, got: &[f32], want: &[f32], rtol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().map(|v| v.abs()).sum::<f32>() / want.len().max(1) as f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rtol * (w.abs() + scale) + 1e-7;
        if !ok {
            return Err(format!("{name}[{i}]: gpu {g} vs cpu {w}"));
        }
    }
    Ok(())
}

/// `|got - want| <= rtol * max |want| + atol` everywhere: for whole-network
/// tensors, whose small entries come out of cancelling sums.
pub fn close_to_max(
    name: &str,
    got: &[f32],
    want: &[f32],
    rtol: f32,
    atol: f32,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Written so that NaN fails.
        let ok = (g - w).abs() <= rtol * scale + atol;
        if !ok {
            return Err(format!("{name}[{i}]: gpu {g} vs cpu {w} (largest {scale})"));
        }
    }
    Ok(())
}
