use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise)]
fn k(x: &[f32], out: &mut [i32]) {
    *out = x * 2.0;
}

fn main() {}
