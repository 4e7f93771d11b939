use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise)]
fn k(x: &[f32], y: &[f32]) {
    let z = x + y;
}

fn main() {}
