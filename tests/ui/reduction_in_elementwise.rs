use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise)]
fn k(x: &[f32], out: &mut [f32]) {
    *out = x / sum(x);
}

fn main() {}
