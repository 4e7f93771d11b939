use rocmforge::gpu_kernel;

#[gpu_kernel(rowwise(block = [2048]))]
fn k(x: &Rows<f32>, out: &mut Rows<f32>) {
    *out = x / sum(x);
}

fn main() {}
