use rocmforge::gpu_kernel;

#[gpu_kernel(rowwise(dtype = [f32, f64], block = [96]))]
fn k(x: &Rows<T>, out: &mut Rows<T>) {
    *out = x / total(x);
}

fn main() {}
