use rocmforge::gpu_kernel;

#[gpu_kernel(rope(head_dim = [128]))]
fn k(q: &mut Heads<f16>, pos: &[i32], inv_freq: &[f32], mscale: f32) {}

fn main() {}
