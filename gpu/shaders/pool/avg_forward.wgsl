// Global average pool: one invocation per plane.

struct Params { planes: u32, plane: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> f: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.planes) {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < p.plane; j++) {
        acc += h[i * p.plane + j];
    }
    f[i] = acc / f32(p.plane);
}
