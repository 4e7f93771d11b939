use rocmforge::gpu_kernel;

#[gpu_kernel(attention(dtype = [bf16], head_dim = [64, 72]))]
fn attn(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {}

fn main() {}
