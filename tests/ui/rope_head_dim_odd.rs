use rocmforge::gpu_kernel;

#[gpu_kernel(rope(layout = neox, dtype = [f16], head_dim = [64, 63]))]
fn k(q: &mut Heads<T>, k: &mut Heads<T>, pos: &[i32], inv_freq: &[f32], mscale: f32) {}

fn main() {}
