use rocmforge::gpu_kernel;

#[gpu_kernel(attention(dtype = [f16], head_dim = [64]))]
fn attn(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {
    mask!(score > 0.0);
}

fn main() {}
