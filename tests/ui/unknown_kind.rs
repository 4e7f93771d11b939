use rocmforge::gpu_kernel;

#[gpu_kernel(pointwise)]
fn k(x: &[f32], out: &mut [f32]) {
    *out = x;
}

fn main() {}
