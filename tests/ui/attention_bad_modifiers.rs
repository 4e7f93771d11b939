use rocmforge::gpu_kernel;

#[gpu_kernel(attention(dtype = [f16], head_dim = [64], block_q = 96))]
fn attn(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32, window: i32) {
    mask!(q_pos - kv_pos);
    score!(q_pos);
    bias!(1.0);
    *out = 1.0;
}

fn main() {}
