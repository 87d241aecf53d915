//! The plumbing every kernel shares: f32 storage buffers and views into
//! them, compute pipelines built from WGSL with explicit bind-group layouts,
//! recorded dispatches ([`Op`]) and their submission, and readback.

use crate::context::Gpu;
use sprout_core::error::{Error, Remedy, Result};
use wgpu::util::DeviceExt;

/// Code every shader starts with (flat indices over 2-D grids, a workgroup sum).
const COMMON: &str = include_str!("../shaders/common.wgsl");

/// Workgroups per grid dimension that wgpu's default limits allow.
const MAX_GROUPS: u32 = 65_535;

/// Tensors start at multiples of this many f32 so they can be bound at an
/// offset (256 bytes: the default `min_storage_buffer_offset_alignment`).
pub const ALIGN: usize = 64;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A range of f32 values in a storage buffer.
#[derive(Clone, Debug)]
pub struct View {
    /// The storage buffer the range lies in.
    pub buffer: wgpu::Buffer,
    /// First element (a multiple of [`ALIGN`]).
    pub offset: usize,
    /// Elements.
    pub len: usize,
}

impl View {
    /// The part of this view from element `start` (a multiple of [`ALIGN`]), `len` long.
    pub fn sub(&self, start: usize, len: usize) -> Result<View> {
        if !start.is_multiple_of(ALIGN) || start + len > self.len || len == 0 {
            return Err(Error::Mismatch(format!(
                "sub-view {start}..{} of a view of {} values",
                start + len,
                self.len
            )));
        }
        Ok(View {
            buffer: self.buffer.clone(),
            offset: self.offset + start,
            len,
        })
    }

    fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: (self.offset * 4) as u64,
            size: wgpu::BufferSize::new((self.len * 4) as u64),
        })
    }
}

/// Checks that view `name` holds at least `need` values.
pub fn need(name: &str, v: &View, need: usize) -> Result<()> {
    if v.len < need {
        return Err(Error::Mismatch(format!(
            "{name} holds {} values, the kernel needs {need}",
            v.len
        )));
    }
    Ok(())
}

impl Gpu {
    /// A zeroed storage buffer of `len` f32 values (at least one), as one view.
    pub fn buffer(&self, label: &str, len: usize) -> Result<View> {
        let len = len.max(1);
        let bytes = (len * 4) as u64;
        let limit = self.device.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(Error::backend_with(
                format!(
                    "{label} needs {} MiB, more than the {} MiB one GPU buffer may hold",
                    bytes >> 20,
                    limit >> 20
                ),
                Remedy::SmallerBatchOrNetwork,
            ));
        }
        let buffer = self.scoped(&format!("allocating {label}"), || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        Ok(View {
            buffer,
            offset: 0,
            len,
        })
    }

    /// A storage buffer holding `data`.
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<View> {
        let v = self.buffer(label, data.len())?;
        self.write(&v, data)?;
        Ok(v)
    }

    /// Writes `data` at the start of `v` (queued before the next submission).
    pub fn write(&self, v: &View, data: &[f32]) -> Result<()> {
        need("destination", v, data.len())?;
        if !data.is_empty() {
            self.queue
                .write_buffer(&v.buffer, (v.offset * 4) as u64, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Writes `data` (u32) at the start of `v`.
    pub fn write_u32(&self, v: &View, data: &[u32]) -> Result<()> {
        need("destination", v, data.len())?;
        if !data.is_empty() {
            self.queue
                .write_buffer(&v.buffer, (v.offset * 4) as u64, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Copies the first `len` values of `v` back to the host (waits for the GPU).
    pub fn read(&self, v: &View, len: usize) -> Result<Vec<f32>> {
        need("source", v, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * 4) as u64;
        let staging = self.scoped("allocating a readback buffer", || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        enc.copy_buffer_to_buffer(&v.buffer, (v.offset * 4) as u64, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        self.map_and_read(&staging)
    }

    fn map_and_read(&self, staging: &wgpu::Buffer) -> Result<Vec<f32>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::backend("GPU readback was cancelled"))?
            .map_err(|e| Error::backend(format!("GPU readback failed: {e}")))?;
        let out = {
            let range = staging
                .get_mapped_range(..)
                .map_err(|e| Error::backend(format!("GPU readback failed: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, f32>(&range)
        };
        staging.unmap();
        Ok(out)
    }
}

/// How a kernel uses one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A uniform block of u32 words (floats as bits).
    Uniform,
    /// A read-only storage array.
    Read,
    /// A read-write storage array.
    Write,
}

/// What one binding of an [`Op`] is bound to.
#[derive(Debug)]
pub enum Res<'a> {
    /// Fresh uniform words, fixed for the op's lifetime.
    Params(&'a [u32]),
    /// A shared uniform buffer written between submissions.
    Uniform(&'a wgpu::Buffer),
    /// A range of a storage buffer.
    View(&'a View),
}

/// A compute pipeline from one WGSL file with its bind-group layout.
#[derive(Debug, Clone)]
pub struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    access: Vec<Access>,
    /// Invocations per workgroup.
    pub wg: u32,
}

/// Words of every uniform params block (the shaders declare at most this many).
const PARAM_WORDS: usize = 16;

impl Kernel {
    /// Compiles `source` (after the common prelude) with `constants` for its
    /// `override` declarations; `wg` is the workgroup size the shader declares.
    pub fn new(
        gpu: &Gpu,
        name: &'static str,
        source: &str,
        access: &[Access],
        constants: &[(&str, f64)],
        wg: u32,
    ) -> Result<Kernel> {
        gpu.scoped(&format!("building kernel {name}"), || {
            let module = gpu
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{source}").into()),
                });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = access
                .iter()
                .enumerate()
                .map(|(i, a)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match a {
                        Access::Uniform => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        Access::Read | Access::Write => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: *a == Access::Read,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                })
                .collect();
            let layout = gpu
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(name),
                    entries: &entries,
                });
            let pl = gpu
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(name),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
            let pipeline = gpu
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
            Ok(Kernel {
                name,
                pipeline,
                layout,
                access: access.to_vec(),
                wg,
            })
        })
    }

    /// Records one dispatch of `groups` workgroups over `resources` (one per binding).
    pub fn op(&self, gpu: &Gpu, resources: &[Res], groups: usize) -> Result<Op> {
        if resources.len() != self.access.len() {
            return Err(Error::backend(format!(
                "kernel {} takes {} bindings, got {}",
                self.name,
                self.access.len(),
                resources.len()
            )));
        }
        let mut owned = Vec::new();
        for r in resources {
            if let Res::Params(words) = r {
                if words.len() > PARAM_WORDS {
                    return Err(Error::backend(format!(
                        "kernel {} got {} parameter words",
                        self.name,
                        words.len()
                    )));
                }
                let mut block = [0u32; PARAM_WORDS];
                block[..words.len()].copy_from_slice(words);
                owned.push(
                    gpu.device
                        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(self.name),
                            contents: bytemuck::cast_slice(&block),
                            usage: wgpu::BufferUsages::UNIFORM,
                        }),
                );
            }
        }
        let mut params = owned.iter();
        let mut entries = Vec::with_capacity(resources.len());
        for (i, (r, a)) in resources.iter().zip(&self.access).enumerate() {
            let resource = match (r, a) {
                (Res::Params(_), Access::Uniform) => params
                    .next()
                    .ok_or_else(|| Error::backend("missing params"))?
                    .as_entire_binding(),
                (Res::Uniform(b), Access::Uniform) => b.as_entire_binding(),
                (Res::View(v), Access::Read | Access::Write) => v.binding(),
                _ => {
                    return Err(Error::backend(format!(
                        "kernel {}: binding {i} has the wrong kind",
                        self.name
                    )))
                }
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            });
        }
        let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        });
        let groups = u32::try_from(groups.max(1)).map_err(|_| too_big(self.name))?;
        let x = groups.min(MAX_GROUPS);
        let y = groups.div_ceil(x);
        if y > MAX_GROUPS {
            return Err(too_big(self.name));
        }
        Ok(Op {
            dispatches: vec![Dispatch {
                pipeline: self.pipeline.clone(),
                bind,
                groups: (x, y),
            }],
        })
    }

    /// Workgroups that cover `invocations` one per invocation.
    pub fn groups_for(&self, invocations: usize) -> usize {
        invocations.div_ceil(self.wg as usize)
    }
}

fn too_big(name: &str) -> Error {
    Error::backend_with(
        format!("kernel {name} would need more workgroups than a GPU dispatch allows"),
        Remedy::SmallerBatch,
    )
}

/// One recorded step: one or more dispatches (a pipeline, its bindings and
/// its grid each), run in order.
#[derive(Debug, Clone)]
pub struct Op {
    dispatches: Vec<Dispatch>,
}

#[derive(Debug, Clone)]
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    groups: (u32, u32),
}

impl Op {
    /// This op followed by `next` (wgpu orders their storage accesses).
    pub fn then(mut self, next: Op) -> Op {
        self.dispatches.extend(next.dispatches);
        self
    }
}

/// Encodes `ops` in order into one compute pass and submits them, then
/// copies `readback` (if any) to the host. One submission per call.
pub fn submit(gpu: &Gpu, ops: &[Op], readback: Option<(&View, usize)>) -> Result<Vec<f32>> {
    gpu.check()?;
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("step"),
        });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("step"),
            timestamp_writes: None,
        });
        for d in ops.iter().flat_map(|op| &op.dispatches) {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
    }
    let staging = match readback {
        Some((v, len)) if len > 0 => {
            need("readback source", v, len)?;
            let bytes = (len * 4) as u64;
            let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.copy_buffer_to_buffer(&v.buffer, (v.offset * 4) as u64, &staging, 0, bytes);
            Some(staging)
        }
        _ => None,
    };
    gpu.queue.submit([enc.finish()]);
    match staging {
        Some(s) => gpu.map_and_read(&s),
        None => {
            gpu.wait()?;
            Ok(Vec::new())
        }
    }
}
