// Backward of the global average pool: dh = df / plane everywhere in the plane.

struct Params { planes: u32, plane: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> df: array<f32>;
@group(0) @binding(2) var<storage, read_write> dh: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.planes * p.plane) {
        return;
    }
    dh[i] = df[i / p.plane] / f32(p.plane);
}
