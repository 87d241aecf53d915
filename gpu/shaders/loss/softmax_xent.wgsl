// Softmax cross-entropy per row: dlogits = (softmax - onehot) / n, and
// rows[r] = (loss, 1 if the first arg-max is the label else 0).

struct Params { n: u32, classes: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> rows: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg) * WG + lid;
    if (r >= p.n) {
        return;
    }
    let base = r * p.classes;
    let label = labels[r];
    var arg = 0u;
    var mx = logits[base];
    for (var k = 1u; k < p.classes; k++) {
        if (logits[base + k] > mx) {
            mx = logits[base + k];
            arg = k;
        }
    }
    var sum = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        sum += exp(logits[base + k] - mx);
    }
    let inv = 1.0 / (sum * f32(p.n));
    for (var k = 0u; k < p.classes; k++) {
        var d = exp(logits[base + k] - mx) * inv;
        if (k == label) {
            d -= 1.0 / f32(p.n);
        }
        dlogits[base + k] = d;
    }
    rows[2u * r] = log(sum) + mx - logits[base + label];
    rows[2u * r + 1u] = select(0.0, 1.0, arg == label);
}
