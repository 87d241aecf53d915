// Prelude of every sprout kernel.
//
// Grids are 2-D (at most 65535 workgroups per dimension); a workgroup's flat
// number is x + y * width. Floats in uniform params are passed as their bits.

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn bits(v: u32) -> f32 {
    return bitcast<f32>(v);
}

// PyTorch's BN epsilon.
const BN_EPS: f32 = 1e-5;

// Lanes of the workgroup reductions.
const LANES: u32 = 64u;
var<workgroup> lane_sums: array<f32, 64>;

// Sum of `v` over the 64 lanes of a workgroup; every lane gets the result.
// Must be called in uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    lane_sums[lid] = v;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            lane_sums[lid] = lane_sums[lid] + lane_sums[lid + s];
        }
        workgroupBarrier();
    }
    return lane_sums[0];
}

// Whether a loss read back from the stats buffer allows an update.
fn usable_loss(l: f32) -> bool {
    return l == l && abs(l) <= 3.0e38;
}
