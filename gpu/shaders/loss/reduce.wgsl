// Batch totals from the per-row results: out = (mean loss, correct count).
// One workgroup.

struct Params { n: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    var l = 0.0;
    var c = 0.0;
    for (var r = lid; r < p.n; r += LANES) {
        l += rows[2u * r];
        c += rows[2u * r + 1u];
    }
    let total = workgroup_sum(lid, l);
    let correct = workgroup_sum(lid, c);
    if (lid == 0u) {
        out[0] = total / f32(p.n);
        out[1] = correct;
    }
}
