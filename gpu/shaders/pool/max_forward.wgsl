// 2x2 max-pool, stride 2 (floor): one invocation per output.

struct Params { planes: u32, ih: u32, iw: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    let oh = p.ih / 2u;
    let ow = p.iw / 2u;
    if (i >= p.planes * oh * ow) {
        return;
    }
    let ox = i % ow;
    let oy = (i / ow) % oh;
    let plane = i / (oh * ow);
    let b = plane * p.ih * p.iw + 2u * oy * p.iw + 2u * ox;
    a[i] = max(max(h[b], h[b + 1u]), max(h[b + p.iw], h[b + p.iw + 1u]));
}
