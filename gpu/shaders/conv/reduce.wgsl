// dw = sum over chunks of the partial tiles backward_weight.wgsl wrote
// (tiles of 8 output x 8 input channels x K taps of one kernel row).

struct Params {
    cin: u32, cout: u32, k: u32, chunks: u32, ci_tiles: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let kk = p.k * p.k;
    if (i >= p.cout * p.cin * kk) {
        return;
    }
    let kx = i % p.k;
    let ky = (i / p.k) % p.k;
    let ci = (i / kk) % p.cin;
    let co = i / (kk * p.cin);
    let first = (((co / 8u) * p.ci_tiles + ci / 8u) * p.k + ky) * p.chunks;
    let ts = 64u * p.k;
    let local = kx * 64u + ((co % 8u) / 4u) * 32u + ((ci % 8u) / 4u) * 16u + (ci % 4u) * 4u + co % 4u;
    var sum = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        sum += part[(first + c) * ts + local];
    }
    dw[i] = sum;
}
