// Packs a conv kernel for forward.wgsl: out[(ci * kk + tap) * coutp + co]
// for coutp = cout rounded up to the channel tile (zeros past cout). With
// `flip` it packs the kernel of the stride-1 input gradient instead: the
// roles of cin and cout swapped and the taps reversed.

struct Params {
    cin: u32, cout: u32, kk: u32, coutp: u32, flip: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= p.cin * p.kk * p.coutp) {
        return;
    }
    let co = i % p.coutp;
    let ct = i / p.coutp;
    let tap = ct % p.kk;
    let ci = ct / p.kk;
    var v = 0.0;
    if (co < p.cout) {
        // cin / cout are the packed (forward) roles; the source kernel of a
        // flipped pack is [ci][co] with reversed taps.
        let src = select((co * p.cin + ci) * p.kk + tap, (ci * p.cout + co) * p.kk + (p.kk - 1u - tap), p.flip != 0u);
        v = w[src];
    }
    out[i] = v;
}
