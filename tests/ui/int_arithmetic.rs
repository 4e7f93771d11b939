use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise)]
fn k(idx: &[i32], x: &[f32], out: &mut [f32]) {
    *out = x * idx;
}

fn main() {}
