// Adam with bias correction over a flat buffer of morphism parameters:
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= step * m / (sqrt(v / c2) + eps),
// step = lr / (1 - b1^t) and c2 = 1 - b2^t computed on the host.
// Skipped when the batch loss is not usable.

@group(0) @binding(0) var<uniform> hp: Hyper;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> theta: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let l = loss[0];
    if (i >= arrayLength(&theta) || !(usable_loss(l) && l > 0.0)) {
        return;
    }
    let g = grad[i];
    let mi = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
    let vi = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    theta[i] = theta[i] - hp.step * mi / (sqrt(vi / hp.c2) + hp.eps);
}
