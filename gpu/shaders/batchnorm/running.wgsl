// Running statistics move toward the batch statistics (momentum 0.1,
// unbiased variance), skipped when the batch loss is not finite.

struct Params { c: u32, st: u32, unbias: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> bn: array<f32>;
@group(0) @binding(3) var<storage, read> loss: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let ch = group_index(wid, nwg) * WG + lid;
    if (ch >= p.c || !usable_loss(loss[0])) {
        return;
    }
    let mom = 0.1;
    let rm = 2u * p.st + ch;
    let rv = 3u * p.st + ch;
    bn[rm] = (1.0 - mom) * bn[rm] + mom * stats[ch];
    bn[rv] = (1.0 - mom) * bn[rv] + mom * stats[p.st + ch] * bits(p.unbias);
}
