//! The CPU interpreter of the kernel IR: the reference semantics every GPU run is
//! compared against, and the host fallback.
//!
//! It computes exactly what the generated code computes: loads converted to f32,
//! arithmetic in f32, reductions accumulated in f32, results rounded to the output
//! dtype on store, outputs of one element (or row) written after all its values are
//! computed (so in-place tensors read their old values).

use half::{bf16, f16};

use crate::args::{resolve, ArgDesc, ArgError, Dims};
use crate::dtype::DType;
use crate::ir::*;

/// Host tensor storage, one variant per dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// i32 elements.
    I32(Vec<i32>),
    /// u32 elements.
    U32(Vec<u32>),
}

/// A dense row-major tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements; `len == shape.iter().product()`.
    pub data: HostData,
}

impl HostTensor {
    /// A tensor of `dtype` holding `values` rounded to that dtype.
    ///
    /// Returns `None` when `values.len()` is not the product of `shape`.
    pub fn from_f32(dtype: DType, shape: &[usize], values: &[f32]) -> Option<Self> {
        if shape.iter().product::<usize>() != values.len() {
            return None;
        }
        let data = match dtype {
            DType::F32 => HostData::F32(values.to_vec()),
            DType::F16 => HostData::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => HostData::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::I32 => HostData::I32(values.iter().map(|&v| v as i32).collect()),
            DType::U32 => HostData::U32(values.iter().map(|&v| v as u32).collect()),
        };
        Some(HostTensor { shape: shape.to_vec(), data })
    }

    /// An i32 tensor.
    pub fn from_i32(shape: &[usize], values: Vec<i32>) -> Option<Self> {
        (shape.iter().product::<usize>() == values.len()).then(|| HostTensor { shape: shape.to_vec(), data: HostData::I32(values) })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::I32(_) => DType::I32,
            HostData::U32(_) => DType::U32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::U32(v) => v.len(),
        }
    }

    /// Whether the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All elements as f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i).as_f32()).collect()
    }

    /// The raw little-endian bytes (what a device buffer holds).
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.data {
            HostData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// A tensor of this dtype and shape read from little-endian bytes.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Option<Self> {
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size() {
            return None;
        }
        let w2 = |c: &[u8]| [c[0], c[1]];
        let w4 = |c: &[u8]| [c[0], c[1], c[2], c[3]];
        let data = match dtype {
            DType::F32 => HostData::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(w4(c))).collect()),
            DType::F16 => HostData::F16(bytes.chunks_exact(2).map(|c| f16::from_le_bytes(w2(c))).collect()),
            DType::BF16 => HostData::BF16(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes(w2(c))).collect()),
            DType::I32 => HostData::I32(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(w4(c))).collect()),
            DType::U32 => HostData::U32(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(w4(c))).collect()),
        };
        Some(HostTensor { shape: shape.to_vec(), data })
    }

    fn get(&self, i: usize) -> Val {
        match &self.data {
            HostData::F32(v) => Val::F(v[i]),
            HostData::F16(v) => Val::F(v[i].to_f32()),
            HostData::BF16(v) => Val::F(v[i].to_f32()),
            HostData::I32(v) => Val::I(v[i]),
            HostData::U32(v) => Val::U(v[i]),
        }
    }

    fn set(&mut self, i: usize, x: Val) {
        match &mut self.data {
            HostData::F32(v) => v[i] = x.as_f32(),
            HostData::F16(v) => v[i] = f16::from_f32(x.as_f32()),
            HostData::BF16(v) => v[i] = bf16::from_f32(x.as_f32()),
            HostData::I32(v) => v[i] = x.as_i64() as i32,
            HostData::U32(v) => v[i] = x.as_i64() as u32,
        }
    }
}

/// One argument for the interpreter.
#[derive(Debug, Clone, PartialEq)]
pub enum HostArg {
    /// A tensor (read, written, or both).
    Tensor(HostTensor),
    /// An f32 scalar.
    F32(f32),
    /// An i32 scalar.
    I32(i32),
    /// A u32 scalar.
    U32(u32),
}

impl HostArg {
    /// The tensor, if this argument is one.
    pub fn tensor(&self) -> Option<&HostTensor> {
        match self {
            HostArg::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The checking view of this argument.
    pub fn desc(&self) -> ArgDesc<'_> {
        match self {
            HostArg::Tensor(t) => ArgDesc::Tensor { dtype: t.dtype(), shape: &t.shape },
            HostArg::F32(_) => ArgDesc::Scalar(ScalarTy::F32),
            HostArg::I32(_) => ArgDesc::Scalar(ScalarTy::I32),
            HostArg::U32(_) => ArgDesc::Scalar(ScalarTy::U32),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Val {
    F(f32),
    I(i32),
    U(u32),
    B(bool),
}

impl Val {
    fn as_f32(self) -> f32 {
        match self {
            Val::F(v) => v,
            Val::I(v) => v as f32,
            Val::U(v) => v as f32,
            Val::B(b) => f32::from(u8::from(b)),
        }
    }
    fn as_i64(self) -> i64 {
        match self {
            Val::F(v) => v as i64,
            Val::I(v) => i64::from(v),
            Val::U(v) => i64::from(v),
            Val::B(b) => i64::from(b),
        }
    }
    fn as_bool(self) -> bool {
        match self {
            Val::B(b) => b,
            other => other.as_i64() != 0,
        }
    }
}

/// Runs a kernel on host arguments, in place: written tensors are updated.
pub fn run(kernel: &Kernel, args: &mut [HostArg]) -> Result<(), ArgError> {
    let (_, dims) = {
        let descs: Vec<ArgDesc<'_>> = args.iter().map(HostArg::desc).collect();
        resolve(kernel, &descs)?
    };
    match (kernel.kind, dims) {
        (Kind::Elementwise, Dims::Elementwise { n }) => run_rows(kernel, args, 1, n as usize),
        (Kind::Rowwise, Dims::Rowwise { rows, cols }) => run_rows(kernel, args, rows as usize, cols as usize),
        (Kind::Attention, Dims::Attention { heads, kv_heads, head_dim, paged, .. }) => {
            run_attention(kernel, args, [heads as usize, kv_heads as usize], head_dim as usize, paged)
        }
        (Kind::Gemv, Dims::Gemv { m, n, k }) => run_gemv(kernel, args, m as usize, n as usize, k as usize),
        (Kind::Rope(layout), Dims::Rope { tokens, q_heads, k_heads, head_dim, half_rot }) => {
            run_rope(args, layout, tokens as usize, [q_heads as usize, k_heads as usize], head_dim as usize, half_rot as usize)
        }
        _ => {}
    }
    Ok(())
}

#[derive(Clone)]
enum RowVal {
    Uniform(Val),
    Row(Vec<Val>),
}

impl RowVal {
    fn at(&self, c: usize) -> Val {
        match self {
            RowVal::Uniform(v) => *v,
            RowVal::Row(r) => r[c],
        }
    }
}

struct RowCx<'a> {
    kernel: &'a Kernel,
    args: &'a [HostArg],
    row: usize,
    cols: usize,
    lets: Vec<RowVal>,
}

impl RowCx<'_> {
    fn map1(&self, a: RowVal, f: impl Fn(Val) -> Val) -> RowVal {
        match a {
            RowVal::Uniform(v) => RowVal::Uniform(f(v)),
            RowVal::Row(r) => RowVal::Row(r.into_iter().map(f).collect()),
        }
    }

    fn mapn(&self, vals: Vec<RowVal>, f: impl Fn(&[Val]) -> Val) -> RowVal {
        if vals.iter().all(|v| matches!(v, RowVal::Uniform(_))) {
            let xs: Vec<Val> = vals.iter().map(|v| v.at(0)).collect();
            return RowVal::Uniform(f(&xs));
        }
        let mut buf = vec![Val::F(0.0); vals.len()];
        RowVal::Row(
            (0..self.cols)
                .map(|c| {
                    for (b, v) in buf.iter_mut().zip(&vals) {
                        *b = v.at(c);
                    }
                    f(&buf)
                })
                .collect(),
        )
    }

    fn eval(&self, e: &Expr) -> RowVal {
        match e {
            Expr::Float(v) => RowVal::Uniform(Val::F(*v as f32)),
            Expr::Int(v) => RowVal::Uniform(Val::I(*v as i32)),
            Expr::Scalar(i) => RowVal::Uniform(match &self.args[*i] {
                HostArg::F32(v) => Val::F(*v),
                HostArg::I32(v) => Val::I(*v),
                HostArg::U32(v) => Val::U(*v),
                HostArg::Tensor(_) => Val::F(f32::NAN),
            }),
            Expr::Tensor(i) => {
                let Some(t) = self.args[*i].tensor() else { return RowVal::Uniform(Val::F(f32::NAN)) };
                let rows_layout = matches!(self.kernel.params[*i].ty, ParamTy::Tensor { layout: Layout::Rows, .. });
                let base = if rows_layout { self.row * self.cols } else { 0 };
                RowVal::Row((0..self.cols).map(|c| t.get(base + c)).collect())
            }
            Expr::Local(i) => self.lets[*i].clone(),
            Expr::Var(_) => RowVal::Uniform(Val::F(f32::NAN)),
            Expr::Unary(op, a) => {
                let a = self.eval(a);
                match op {
                    UnOp::Neg => self.map1(a, |v| Val::F(-v.as_f32())),
                    UnOp::Not => self.map1(a, |v| Val::B(!v.as_bool())),
                }
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (self.eval(a), self.eval(b));
                let op = *op;
                self.mapn(vec![a, b], move |x| binary(op, x[0], x[1]))
            }
            Expr::Call(f, args) => {
                let vals = args.iter().map(|a| self.eval(a)).collect();
                let f = *f;
                self.mapn(vals, move |x| Val::F(intrinsic(f, x)))
            }
            Expr::Select(c, a, b) => {
                let vals = vec![self.eval(c), self.eval(a), self.eval(b)];
                self.mapn(vals, |x| if x[0].as_bool() { x[1] } else { x[2] })
            }
            Expr::Cast(to, a) => {
                let a = self.eval(a);
                let to = *to;
                self.map1(a, move |v| cast(to, v))
            }
            // A product has no per-column value; gemv kernels evaluate it in `run_gemv`.
            Expr::Dot(..) => RowVal::Uniform(Val::F(f32::NAN)),
            Expr::Reduce(op, a) => {
                let a = self.eval(a);
                let vals: Vec<f32> = (0..self.cols).map(|c| a.at(c).as_f32()).collect();
                let r = match op {
                    ReduceOp::Sum => vals.iter().sum::<f32>(),
                    ReduceOp::Mean => vals.iter().sum::<f32>() / self.cols as f32,
                    ReduceOp::Max => vals.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    ReduceOp::Min => vals.iter().copied().fold(f32::INFINITY, f32::min),
                };
                RowVal::Uniform(Val::F(r))
            }
        }
    }
}

fn cast(to: CastTo, v: Val) -> Val {
    match to {
        CastTo::F32 => Val::F(v.as_f32()),
        CastTo::F16 => Val::F(f16::from_f32(v.as_f32()).to_f32()),
        CastTo::BF16 => Val::F(bf16::from_f32(v.as_f32()).to_f32()),
        CastTo::I32 => Val::I(match v {
            Val::F(f) => f as i32,
            other => other.as_i64() as i32,
        }),
        CastTo::U32 => Val::U(match v {
            Val::F(f) => f as u32,
            other => other.as_i64() as u32,
        }),
    }
}

fn binary(op: BinOp, a: Val, b: Val) -> Val {
    let cmp = |a: Val, b: Val| -> std::cmp::Ordering {
        match (a, b) {
            (Val::F(_), _) | (_, Val::F(_)) => a.as_f32().partial_cmp(&b.as_f32()).unwrap_or(std::cmp::Ordering::Less),
            _ => a.as_i64().cmp(&b.as_i64()),
        }
    };
    let float_cmp = |f: fn(f32, f32) -> bool| match (a, b) {
        (Val::F(_), _) | (_, Val::F(_)) => Some(f(a.as_f32(), b.as_f32())),
        _ => None,
    };
    match op {
        BinOp::Add => Val::F(a.as_f32() + b.as_f32()),
        BinOp::Sub => Val::F(a.as_f32() - b.as_f32()),
        BinOp::Mul => Val::F(a.as_f32() * b.as_f32()),
        BinOp::Div => Val::F(a.as_f32() / b.as_f32()),
        BinOp::And => Val::B(a.as_bool() && b.as_bool()),
        BinOp::Or => Val::B(a.as_bool() || b.as_bool()),
        // Float comparisons follow IEEE (NaN compares false), as the generated C++ does.
        BinOp::Lt => Val::B(float_cmp(|x, y| x < y).unwrap_or_else(|| cmp(a, b).is_lt())),
        BinOp::Le => Val::B(float_cmp(|x, y| x <= y).unwrap_or_else(|| cmp(a, b).is_le())),
        BinOp::Gt => Val::B(float_cmp(|x, y| x > y).unwrap_or_else(|| cmp(a, b).is_gt())),
        BinOp::Ge => Val::B(float_cmp(|x, y| x >= y).unwrap_or_else(|| cmp(a, b).is_ge())),
        BinOp::Eq => Val::B(float_cmp(|x, y| x == y).unwrap_or_else(|| cmp(a, b).is_eq())),
        BinOp::Ne => Val::B(float_cmp(|x, y| x != y).unwrap_or_else(|| cmp(a, b).is_ne())),
    }
}

/// f32 semantics of each intrinsic, matching the portability header's definitions.
fn intrinsic(f: Intrinsic, x: &[Val]) -> f32 {
    let a = x[0].as_f32();
    match f {
        Intrinsic::Exp => a.exp(),
        Intrinsic::Log => a.ln(),
        Intrinsic::Sqrt => a.sqrt(),
        Intrinsic::Rsqrt => 1.0 / a.sqrt(),
        Intrinsic::Tanh => a.tanh(),
        Intrinsic::Sigmoid => 1.0 / (1.0 + (-a).exp()),
        Intrinsic::Silu => a / (1.0 + (-a).exp()),
        Intrinsic::Gelu => 0.5 * a * libm::erfcf(-a * std::f32::consts::FRAC_1_SQRT_2),
        Intrinsic::GeluTanh => a / (1.0 + (-1.595_769_2 * (a + 0.044715 * a * a * a)).exp()),
        Intrinsic::Erf => libm::erff(a),
        Intrinsic::Abs => a.abs(),
        Intrinsic::Min => a.min(x[1].as_f32()),
        Intrinsic::Max => a.max(x[1].as_f32()),
        Intrinsic::Pow => a.powf(x[1].as_f32()),
    }
}

fn run_rows(kernel: &Kernel, args: &mut [HostArg], rows: usize, cols: usize) {
    for row in 0..rows {
        let results: Vec<(usize, RowVal)> = {
            let mut cx = RowCx { kernel, args, row, cols, lets: Vec::with_capacity(kernel.lets.len()) };
            for l in &kernel.lets {
                let v = cx.eval(&l.value);
                cx.lets.push(v);
            }
            kernel.stores.iter().map(|s| (s.param, cx.eval(&s.value))).collect()
        };
        for (param, val) in results {
            let rows_layout = matches!(kernel.params[param].ty, ParamTy::Tensor { layout: Layout::Rows, .. });
            let base = if rows_layout { row * cols } else { 0 };
            if let HostArg::Tensor(t) = &mut args[param] {
                for c in 0..cols {
                    t.set(base + c, val.at(c));
                }
            }
        }
    }
}

/// One input row of a gemv kernel: each `dot` argument's column values and each
/// reduction's result, computed once and shared by all output columns.
struct GemvRow<'a> {
    cx: RowCx<'a>,
    /// `(node, argument over the k columns)` of each `dot`.
    dots: Vec<(*const Expr, RowVal)>,
    /// `(node, value)` of each reduction.
    reductions: Vec<(*const Expr, Val)>,
}

impl GemvRow<'_> {
    fn prepare(&mut self, e: &Expr) {
        match e {
            Expr::Dot(_, a) => {
                let v = self.cx.eval(a);
                self.dots.push((e as *const Expr, v));
            }
            Expr::Reduce(..) => {
                let v = self.cx.eval(e).at(0);
                self.reductions.push((e as *const Expr, v));
            }
            Expr::Unary(_, a) | Expr::Cast(_, a) => self.prepare(a),
            Expr::Binary(_, a, b) => {
                self.prepare(a);
                self.prepare(b);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| self.prepare(a)),
            Expr::Select(c, a, b) => {
                self.prepare(c);
                self.prepare(a);
                self.prepare(b);
            }
            Expr::Float(_) | Expr::Int(_) | Expr::Scalar(_) | Expr::Local(_) | Expr::Var(_) | Expr::Tensor(_) => {}
        }
    }

    /// The value of an output-side expression at output column `r` (of `n`); products
    /// accumulate in f32 in column order.
    fn eval(&self, e: &Expr, r: usize, n: usize, k: usize) -> Val {
        let go = |a: &Expr| self.eval(a, r, n, k);
        match e {
            Expr::Tensor(i) => {
                let Some(t) = self.cx.args[*i].tensor() else { return Val::F(f32::NAN) };
                let rows_layout = matches!(self.cx.kernel.params[*i].ty, ParamTy::Tensor { layout: Layout::Rows, .. });
                t.get(if rows_layout { self.cx.row * n + r } else { r })
            }
            Expr::Dot(w, _) => {
                let (Some(wt), Some((_, x))) = (self.cx.args[*w].tensor(), self.dots.iter().find(|(p, _)| std::ptr::eq(*p, e))) else {
                    return Val::F(f32::NAN);
                };
                Val::F((0..k).fold(0.0f32, |acc, c| acc + wt.get(r * k + c).as_f32() * x.at(c).as_f32()))
            }
            Expr::Reduce(..) => self.reductions.iter().find(|(p, _)| std::ptr::eq(*p, e)).map_or(Val::F(f32::NAN), |(_, v)| *v),
            Expr::Unary(UnOp::Neg, a) => Val::F(-go(a).as_f32()),
            Expr::Unary(UnOp::Not, a) => Val::B(!go(a).as_bool()),
            Expr::Binary(op, a, b) => binary(*op, go(a), go(b)),
            Expr::Call(f, args) => {
                let xs: Vec<Val> = args.iter().map(go).collect();
                Val::F(intrinsic(*f, &xs))
            }
            Expr::Select(c, a, b) => {
                if go(c).as_bool() {
                    go(a)
                } else {
                    go(b)
                }
            }
            Expr::Cast(to, a) => cast(*to, go(a)),
            Expr::Float(_) | Expr::Int(_) | Expr::Scalar(_) | Expr::Local(_) | Expr::Var(_) => self.cx.eval(e).at(0),
        }
    }
}

fn run_gemv(kernel: &Kernel, args: &mut [HostArg], m: usize, n: usize, k: usize) {
    for mi in 0..m {
        let results: Vec<(usize, Vec<Val>)> = {
            let cx = RowCx { kernel, args, row: mi, cols: k, lets: Vec::new() };
            let mut row = GemvRow { cx, dots: Vec::new(), reductions: Vec::new() };
            kernel.stores.iter().for_each(|s| row.prepare(&s.value));
            kernel.stores.iter().map(|s| (s.param, (0..n).map(|r| row.eval(&s.value, r, n, k)).collect())).collect()
        };
        for (param, vals) in results {
            if let HostArg::Tensor(t) = &mut args[param] {
                for (r, v) in vals.into_iter().enumerate() {
                    t.set(mi * n + r, v);
                }
            }
        }
    }
}

fn run_rope(args: &mut [HostArg], layout: RopeLayout, tokens: usize, heads: [usize; 2], hd: usize, half_rot: usize) {
    let (pos, freq, mscale) = match (&args[2], &args[3], &args[4]) {
        (HostArg::Tensor(p), HostArg::Tensor(f), HostArg::F32(m)) => (p.clone(), f.to_f32_vec(), *m),
        _ => return,
    };
    for (ti, nh) in heads.into_iter().enumerate() {
        let HostArg::Tensor(x) = &mut args[ti] else { continue };
        for t in 0..tokens {
            let p = pos.get(t).as_f32();
            for h in 0..nh {
                let base = (t * nh + h) * hd;
                for (i, &f) in freq.iter().enumerate().take(half_rot) {
                    let (sn, cs) = (p * f).sin_cos();
                    let (cs, sn) = (cs * mscale, sn * mscale);
                    let (i1, i2) = match layout {
                        RopeLayout::Neox => (base + i, base + i + half_rot),
                        RopeLayout::Gptj => (base + 2 * i, base + 2 * i + 1),
                    };
                    let x1 = x.get(i1).as_f32();
                    let x2 = x.get(i2).as_f32();
                    x.set(i1, Val::F(x1 * cs - x2 * sn));
                    x.set(i2, Val::F(x2 * cs + x1 * sn));
                }
            }
        }
    }
}

/// The values an attention modifier sees.
struct AttnEnv<'a> {
    args: &'a [HostArg],
    vars: [i32; 5],
    score: f32,
}

fn eval_attn(e: &Expr, env: &AttnEnv<'_>) -> Val {
    let go = |a: &Expr| eval_attn(a, env);
    match e {
        Expr::Float(v) => Val::F(*v as f32),
        Expr::Int(v) => Val::I(*v as i32),
        Expr::Scalar(i) => match &env.args[*i] {
            HostArg::F32(v) => Val::F(*v),
            HostArg::I32(v) => Val::I(*v),
            HostArg::U32(v) => Val::U(*v),
            HostArg::Tensor(_) => Val::F(f32::NAN),
        },
        Expr::Var(v) => match v {
            AttnVar::QPos => Val::I(env.vars[0]),
            AttnVar::KvPos => Val::I(env.vars[1]),
            AttnVar::Head => Val::I(env.vars[2]),
            AttnVar::KvHead => Val::I(env.vars[3]),
            AttnVar::Batch => Val::I(env.vars[4]),
            AttnVar::Score => Val::F(env.score),
        },
        Expr::Unary(UnOp::Neg, a) => Val::F(-go(a).as_f32()),
        Expr::Unary(UnOp::Not, a) => Val::B(!go(a).as_bool()),
        Expr::Binary(op, a, b) => {
            let (a, b) = (go(a), go(b));
            match (op, a, b) {
                // i32 arithmetic wraps like the GPU's (C's `int` with two's complement).
                (BinOp::Add, Val::I(x), Val::I(y)) => Val::I(x.wrapping_add(y)),
                (BinOp::Sub, Val::I(x), Val::I(y)) => Val::I(x.wrapping_sub(y)),
                (BinOp::Mul, Val::I(x), Val::I(y)) => Val::I(x.wrapping_mul(y)),
                (BinOp::Div, Val::I(x), Val::I(y)) => Val::I(if y == 0 { 0 } else { x.wrapping_div(y) }),
                _ => binary(*op, a, b),
            }
        }
        Expr::Call(f, xs) => {
            let xs: Vec<Val> = xs.iter().map(go).collect();
            Val::F(intrinsic(*f, &xs))
        }
        Expr::Select(c, a, b) => {
            if go(c).as_bool() {
                go(a)
            } else {
                go(b)
            }
        }
        Expr::Cast(to, a) => {
            let a = go(a);
            match to {
                CastTo::F32 => Val::F(a.as_f32()),
                CastTo::I32 => Val::I(a.as_i64() as i32),
                CastTo::U32 => Val::U(a.as_i64() as u32),
                CastTo::F16 => Val::F(DType::F16.round_f32(a.as_f32())),
                CastTo::BF16 => Val::F(DType::BF16.round_f32(a.as_f32())),
            }
        }
        Expr::Local(_) | Expr::Tensor(_) | Expr::Reduce(..) | Expr::Dot(..) => Val::F(f32::NAN),
    }
}

/// Attention on the host: scores in f64 from the stored (rounded) inputs, the modifiers
/// in f32 as on the GPU, the output rounded to the tensor's dtype.
fn run_attention(kernel: &Kernel, args: &mut [HostArg], [heads, kv_heads]: [usize; 2], d: usize, paged: Option<(u64, u64, u64)>) {
    let n = kernel.params.len();
    let ints = |a: &HostArg| -> Vec<i32> { a.tensor().map(|t| t.to_f32_vec().iter().map(|&x| x as i32).collect()).unwrap_or_default() };
    let cu_q = ints(&args[n]);
    let (cu_k, table, lens) = match paged {
        None => (ints(&args[n + 1]), Vec::new(), Vec::new()),
        Some(_) => (Vec::new(), ints(&args[n + 1]), ints(&args[n + 2])),
    };
    let floats = |i: usize| args[i].tensor().map(HostTensor::to_f32_vec).unwrap_or_default();
    let (q, k, v) = (floats(0), floats(1), floats(2));
    let scale = match args[4] {
        HostArg::F32(s) => s,
        _ => return,
    };
    let group = heads / kv_heads.max(1);
    let total_q = q.len() / (heads * d).max(1);
    // Rows no sequence covers keep their values, as on the GPU.
    let mut out = floats(3);
    for b in 0..cu_q.len().saturating_sub(1) {
        let (q0, q1) = (cu_q[b].max(0) as usize, (cu_q[b + 1].max(0) as usize).min(total_q));
        if q1 <= q0 {
            continue;
        }
        let q_len = q1 - q0;
        let kv_len = match paged {
            None => (cu_k[b + 1] - cu_k[b]).max(0) as usize,
            Some(_) => lens[b].max(0) as usize,
        };
        // The first element of K/V row `pos` of this sequence, or None (a bad page).
        let row = |pos: usize, kvh: usize| -> Option<usize> {
            let r = match paged {
                None => cu_k[b] as usize + pos,
                Some((pages, page_size, max_pages)) => {
                    let page = table[b * max_pages as usize + pos / page_size as usize];
                    if page < 0 || page as u64 >= pages {
                        return None;
                    }
                    page as usize * page_size as usize + pos % page_size as usize
                }
            };
            Some((r * kv_heads + kvh) * d)
        };
        for h in 0..heads {
            let kvh = h / group.max(1);
            for i in 0..q_len {
                let q_pos = (kv_len as i64 - q_len as i64 + i as i64) as i32;
                let qrow = &q[((q0 + i) * heads + h) * d..][..d];
                let mut scores = vec![f64::NEG_INFINITY; kv_len];
                for (pos, s) in scores.iter_mut().enumerate() {
                    let dot: f64 = match row(pos, kvh) {
                        Some(o) => qrow.iter().zip(&k[o..o + d]).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum(),
                        None => 0.0,
                    };
                    let mut env =
                        AttnEnv { args, vars: [q_pos, pos as i32, h as i32, kvh as i32, b as i32], score: (dot * f64::from(scale)) as f32 };
                    if let Some(m) = &kernel.score_mod {
                        env.score = eval_attn(m, &env).as_f32();
                    }
                    let visible = kernel.mask.as_ref().is_none_or(|m| eval_attn(m, &env).as_bool());
                    if visible {
                        *s = f64::from(env.score);
                    }
                }
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let o = &mut out[((q0 + i) * heads + h) * d..][..d];
                if m == f64::NEG_INFINITY {
                    o.fill(0.0);
                    continue;
                }
                let mut sum = 0.0;
                let mut acc = vec![0.0f64; d];
                for (pos, &s) in scores.iter().enumerate() {
                    let p = (s - m).exp();
                    if p == 0.0 {
                        continue;
                    }
                    sum += p;
                    if let Some(r) = row(pos, kvh) {
                        for (a, &x) in acc.iter_mut().zip(&v[r..r + d]) {
                            *a += p * f64::from(x);
                        }
                    }
                }
                for (o, a) in o.iter_mut().zip(acc) {
                    *o = (a / sum) as f32;
                }
            }
        }
    }
    if let HostArg::Tensor(t) = &mut args[3] {
        for (i, x) in out.into_iter().enumerate() {
            t.set(i, Val::F(x));
        }
    }
}
