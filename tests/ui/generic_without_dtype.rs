use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise)]
fn k(x: &[T], out: &mut [T]) {
    *out = x;
}

fn main() {}
