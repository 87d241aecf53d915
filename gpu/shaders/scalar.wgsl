// Prelude of the kernels that take one value per invocation.
alias V = f32;
const VEC: u32 = 1u;

fn hsum(v: V) -> f32 {
    return v;
}

fn first(v: V) -> f32 {
    return v;
}
