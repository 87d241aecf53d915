// Cross terms of the joint estimate of a set of candidates (eq. (1) with the
// u of the set's members added): per pair (i, j),
// pairs[i, j] = 1 / (4 L_hat S) * sum_s u_i[s] * u_j[s], folded into the
// pair's moving average (initialised when cross_first is set: the phase's
// first batch, or the first with the joint estimate on). One invocation per
// pair, i * k + j. Candidate c's u for sample s is
// u[slots[2c] + s * slots[2c + 1]] (the slot table: offset of its block and
// its layer's width). Skipped when the batch loss is not usable.

struct Params { k: u32, n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> hp: Hyper;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> slots: array<u32>;
@group(0) @binding(4) var<storage, read> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> pairs: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = group_index(wid, nwg) * WG + lid;
    let l = loss[0];
    if (idx >= p.k * p.k || !(usable_loss(l) && l > 0.0)) {
        return;
    }
    let i = idx / p.k;
    let j = idx % p.k;
    let oi = slots[2u * i];
    let si = slots[2u * i + 1u];
    let oj = slots[2u * j];
    let sj = slots[2u * j + 1u];
    var total = 0.0;
    for (var s = 0u; s < p.n; s++) {
        total += u[oi + s * si] * u[oj + s * sj];
    }
    let batch = total * (1.0 / (4.0 * l * f32(p.n)));
    if (hp.cross_first != 0u) {
        pairs[idx] = batch;
    } else {
        pairs[idx] = (1.0 - hp.ema_alpha) * pairs[idx] + hp.ema_alpha * batch;
    }
}
