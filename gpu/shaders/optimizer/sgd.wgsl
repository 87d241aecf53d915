// SGD with (Nesterov) momentum and L2 weight decay, PyTorch semantics:
// g += wd * p; buf = mu * buf + g; p -= lr * (nesterov ? g + mu * buf : buf).
// Over the whole flat parameter buffer; `mask` is 1 for learnable entries.
// Skipped when the batch loss is not finite.

struct Hyper { lr: f32, momentum: f32, weight_decay: f32, nesterov: u32 }

@group(0) @binding(0) var<uniform> hp: Hyper;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> params: array<f32>;
@group(0) @binding(5) var<storage, read_write> buf: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= arrayLength(&params) || mask[i] == 0.0 || !usable_loss(loss[0])) {
        return;
    }
    let g = grads[i] + hp.weight_decay * params[i];
    let b = hp.momentum * buf[i] + g;
    buf[i] = b;
    let d = select(b, g + hp.momentum * b, hp.nesterov != 0u);
    params[i] = params[i] - hp.lr * d;
}
