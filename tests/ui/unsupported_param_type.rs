use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise)]
fn k(x: Vec<f32>, out: &mut [f32]) {
    *out = 1.0;
}

fn main() {}
