use rocmforge::gpu_kernel;

// The first argument of `dot` must be a `&Rows<T>` weight.
#[gpu_kernel(gemv(dtype = [f16]))]
fn weight_is_vector(x: &Rows<T>, w: &[T], out: &mut Rows<T>) {
    *out = dot(w, x);
}

// A tensor used per input column and per output element has no single shape.
#[gpu_kernel(gemv(dtype = [f16]))]
fn two_roles(x: &Rows<T>, w: &Rows<T>, out: &mut Rows<T>) {
    *out = dot(w, x) + x;
}

// Products and reductions are computed in one pass: they do not nest.
#[gpu_kernel(gemv(dtype = [f16]))]
fn nested(x: &Rows<T>, w: &Rows<T>, out: &mut Rows<T>) {
    let s = sum(x);
    *out = dot(w, x * s);
}

// A gemv kernel needs a product, and every tensor must be used.
#[gpu_kernel(gemv(dtype = [f16]))]
fn no_dot(x: &Rows<T>, b: &[T], out: &mut Rows<T>) {
    *out = x;
}

// `dot` belongs to gemv kernels.
#[gpu_kernel(rowwise(dtype = [f16]))]
fn dot_in_rowwise(x: &Rows<T>, out: &mut Rows<T>) {
    *out = dot(x, x);
}

// Gemv outputs are rows: [m, n].
#[gpu_kernel(gemv(dtype = [f16]))]
fn vector_output(x: &Rows<T>, w: &Rows<T>, out: &mut [T]) {
    *out = dot(w, x);
}

fn main() {}
