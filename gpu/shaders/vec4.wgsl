// Prelude of the kernels that take four values per invocation.
alias V = vec4<f32>;
const VEC: u32 = 4u;

fn hsum(v: V) -> f32 {
    return v.x + v.y + v.z + v.w;
}

fn first(v: V) -> f32 {
    return v.x;
}
