// dk = sum over chunks of the partial kernels backward_weight.wgsl wrote.

struct Params { c: u32, chunks: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> dk: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.c * 9u) {
        return;
    }
    let first = (i / 9u) * p.chunks * 9u + i % 9u;
    var sum = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        sum += part[first + c * 9u];
    }
    dk[i] = sum;
}
