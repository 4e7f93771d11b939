//! The typed kernel IR: what a `#[gpu_kernel]` declaration means, without syntax.
//!
//! The IR is produced by [`crate::parse`], which validates as it goes, so every value of
//! [`Kernel`] is well formed: names resolve, types check, outputs are written once and
//! the options are in range for the kind. Codegen and the interpreter rely on that.

use crate::dtype::DType;

/// A validated kernel declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// The declared function name.
    pub name: String,
    /// The template family and its kind-specific options.
    pub kind: Kind,
    /// Options shared by all kinds.
    pub options: Options,
    /// Parameters in declaration order (the launch argument order).
    pub params: Vec<Param>,
    /// `let` bindings, in order; [`Expr::Local`] indexes this list.
    pub lets: Vec<Let>,
    /// Output stores, one per written tensor, in source order.
    pub stores: Vec<Store>,
    /// Attention: the `mask!(...)` condition (true keeps a score), with lets inlined.
    pub mask: Option<Expr>,
    /// Attention: the `score!(...)` modifier of `score` (after scaling), lets inlined.
    pub score_mod: Option<Expr>,
}

/// The template family of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One output element per thread, 16-byte vectorized, grid-stride.
    Elementwise,
    /// One row per workgroup (or per warp), with row reductions.
    Rowwise,
    /// Rotary position embedding over `[tokens, heads, head_dim]` for q and k.
    Rope(RopeLayout),
    /// Scaled dot-product attention (prefill tiles on matrix cores, split-KV decode,
    /// paged KV), with FlexAttention-style `mask!` and `score!` modifiers.
    Attention,
    /// Matrix-vector products for decode: `out[m, r] = f(dot(w, g(x))[m, r], ...)`, one
    /// warp per output column `r` streaming row `r` of each weight `w [n, k]` once for
    /// the (few) rows `m` of the activations.
    Gemv,
}

impl Kind {
    /// The name used in `#[gpu_kernel(KIND)]`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Elementwise => "elementwise",
            Kind::Rowwise => "rowwise",
            Kind::Rope(_) => "rope",
            Kind::Attention => "attention",
            Kind::Gemv => "gemv",
        }
    }
}

/// Which elements a rotary embedding rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// GPT-NeoX / Llama: element `i` pairs with `i + rotary_dim / 2`.
    Neox,
    /// GPT-J: element `2i` pairs with `2i + 1`.
    Gptj,
}

/// Options common to the kinds; each kind uses the ones that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Values of the generic dtype `T`; empty when no parameter is generic.
    pub dtypes: Vec<DType>,
    /// Workgroup sizes to specialize for.
    pub blocks: Vec<u32>,
    /// Head dims to specialize for (rope, attention).
    pub head_dims: Vec<u32>,
    /// Query rows per prefill workgroup (attention): 64 or 128.
    pub block_q: u32,
    /// Key/value rows per prefill tile (attention): 32, 64 or 128; `None` when the
    /// declaration leaves it to `spec::prefill_tiles` (128 up to head_dim 64, else 64).
    pub block_kv: Option<u32>,
    /// Print the expansion and the generated HIP at compile time.
    pub debug: bool,
}

/// A kernel parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter name.
    pub name: String,
    /// Its type.
    pub ty: ParamTy,
}

/// A dtype as written in a declaration: concrete, or the generic `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeRef {
    /// A fixed dtype.
    Concrete(DType),
    /// The generic `T`, one specialization per entry of `dtype = [...]`.
    Generic,
}

impl DTypeRef {
    /// Resolves against a specialization's dtype.
    pub fn resolve(self, generic: Option<DType>) -> DType {
        match self {
            DTypeRef::Concrete(d) => d,
            DTypeRef::Generic => generic.unwrap_or(DType::F32),
        }
    }
}

/// The layout a tensor parameter is declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `&[T]`: a flat array (elementwise), or a vector over the row's columns (rowwise).
    Flat,
    /// `Rows<T>`: `[rows, cols]`, row-major, contiguous.
    Rows,
    /// `Heads<T>`: `[tokens, heads, head_dim]`, contiguous.
    Heads,
}

impl Layout {
    /// The spelling in declarations.
    pub const fn spelling(self) -> &'static str {
        match self {
            Layout::Flat => "[T]",
            Layout::Rows => "Rows<T>",
            Layout::Heads => "Heads<T>",
        }
    }
}

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamTy {
    /// A tensor in device memory.
    Tensor {
        /// Element type.
        dtype: DTypeRef,
        /// Declared layout.
        layout: Layout,
        /// Declared `&mut`: the kernel may write it.
        mutable: bool,
    },
    /// A scalar passed by value.
    Scalar(ScalarTy),
}

impl ParamTy {
    /// Whether this is a tensor parameter.
    pub const fn is_tensor(&self) -> bool {
        matches!(self, ParamTy::Tensor { .. })
    }
}

/// Scalar parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarTy {
    /// `f32`.
    F32,
    /// `i32`.
    I32,
    /// `u32`.
    U32,
}

impl ScalarTy {
    /// The value type of this scalar in expressions.
    pub const fn ty(self) -> Ty {
        match self {
            ScalarTy::F32 => Ty::F32,
            ScalarTy::I32 => Ty::I32,
            ScalarTy::U32 => Ty::U32,
        }
    }
}

/// The type of an expression value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// f32 (all float dtypes compute in f32).
    F32,
    /// i32.
    I32,
    /// u32.
    U32,
    /// A comparison result.
    Bool,
}

impl Ty {
    /// Name in diagnostics.
    pub const fn name(self) -> &'static str {
        match self {
            Ty::F32 => "f32",
            Ty::I32 => "i32",
            Ty::U32 => "u32",
            Ty::Bool => "bool",
        }
    }

    /// C++ type of a value.
    pub const fn c_type(self) -> &'static str {
        match self {
            Ty::F32 => "float",
            Ty::I32 => "int",
            Ty::U32 => "unsigned int",
            Ty::Bool => "bool",
        }
    }

    /// The compute type of a stored dtype.
    pub const fn of_dtype(d: DType) -> Ty {
        match d {
            DType::F32 | DType::F16 | DType::BF16 => Ty::F32,
            DType::I32 => Ty::I32,
            DType::U32 => Ty::U32,
        }
    }
}

/// A `let` binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Let {
    /// The bound name.
    pub name: String,
    /// The value.
    pub value: Expr,
    /// Its type.
    pub ty: Ty,
}

/// `*param = value;`
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// Index of the written tensor parameter.
    pub param: usize,
    /// The value, of the tensor's compute type.
    pub value: Expr,
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `!b`
    Not,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `&&`
    And,
    /// `||`
    Or,
}

impl BinOp {
    /// The C++ (and Rust) spelling.
    pub const fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }

    /// Whether the result is a bool computed from two numbers.
    pub const fn is_comparison(self) -> bool {
        matches!(self, BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne)
    }

    /// Whether operands and result are bools.
    pub const fn is_logical(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or)
    }
}

/// Math intrinsics; all take and return f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intrinsic {
    /// e^x
    Exp,
    /// natural log
    Log,
    /// square root
    Sqrt,
    /// 1 / sqrt(x)
    Rsqrt,
    /// hyperbolic tangent
    Tanh,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// x * sigmoid(x)
    Silu,
    /// GELU, erf form
    Gelu,
    /// GELU, tanh approximation
    GeluTanh,
    /// error function
    Erf,
    /// |x|
    Abs,
    /// min(a, b)
    Min,
    /// max(a, b)
    Max,
    /// a^b
    Pow,
}

impl Intrinsic {
    /// Every intrinsic with its name and arity.
    pub const ALL: [(Intrinsic, &'static str, usize); 14] = [
        (Intrinsic::Exp, "exp", 1),
        (Intrinsic::Log, "log", 1),
        (Intrinsic::Sqrt, "sqrt", 1),
        (Intrinsic::Rsqrt, "rsqrt", 1),
        (Intrinsic::Tanh, "tanh", 1),
        (Intrinsic::Sigmoid, "sigmoid", 1),
        (Intrinsic::Silu, "silu", 1),
        (Intrinsic::Gelu, "gelu", 1),
        (Intrinsic::GeluTanh, "gelu_tanh", 1),
        (Intrinsic::Erf, "erf", 1),
        (Intrinsic::Abs, "abs", 1),
        (Intrinsic::Min, "min", 2),
        (Intrinsic::Max, "max", 2),
        (Intrinsic::Pow, "pow", 2),
    ];

    /// The C++ function that computes it.
    pub const fn c_name(self) -> &'static str {
        match self {
            Intrinsic::Exp => "expf",
            Intrinsic::Log => "logf",
            Intrinsic::Sqrt => "sqrtf",
            Intrinsic::Rsqrt => "rsqrtf",
            Intrinsic::Tanh => "tanhf",
            Intrinsic::Sigmoid => "rf_sigmoid",
            Intrinsic::Silu => "rf_silu",
            Intrinsic::Gelu => "rf_gelu_erf",
            Intrinsic::GeluTanh => "rf_gelu_tanh",
            Intrinsic::Erf => "erff",
            Intrinsic::Abs => "fabsf",
            Intrinsic::Min => "fminf",
            Intrinsic::Max => "fmaxf",
            Intrinsic::Pow => "powf",
        }
    }
}

/// Row reductions (rowwise kernels only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum over the row.
    Sum,
    /// Mean over the row.
    Mean,
    /// Maximum over the row.
    Max,
    /// Minimum over the row.
    Min,
}

impl ReduceOp {
    /// Name in declarations.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

/// Casts available with `as`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastTo {
    /// `as f32`
    F32,
    /// `as f16`: round to f16 precision, stay f32.
    F16,
    /// `as bf16`: round to bf16 precision, stay f32.
    BF16,
    /// `as i32` (truncation toward zero, like C).
    I32,
    /// `as u32`
    U32,
}

impl CastTo {
    /// The resulting value type.
    pub const fn ty(self) -> Ty {
        match self {
            CastTo::F32 | CastTo::F16 | CastTo::BF16 => Ty::F32,
            CastTo::I32 => Ty::I32,
            CastTo::U32 => Ty::U32,
        }
    }
}

/// An expression. Every node's type was checked by the parser.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A float literal (also an integer literal in float context).
    Float(f64),
    /// An integer literal in integer context.
    Int(i64),
    /// The current element (or row value) of a tensor parameter.
    Tensor(usize),
    /// A scalar parameter.
    Scalar(usize),
    /// A `let` binding.
    Local(usize),
    /// A unary operation.
    Unary(UnOp, Box<Expr>),
    /// A binary operation.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A math intrinsic.
    Call(Intrinsic, Vec<Expr>),
    /// A row reduction.
    Reduce(ReduceOp, Box<Expr>),
    /// `select(cond, a, b)`
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `e as T`
    Cast(CastTo, Box<Expr>),
    /// A built-in variable of the attention modifiers.
    Var(AttnVar),
    /// `dot(w, e)` (gemv kernels): the product of row `r` of weight parameter `w`
    /// (`[n, k]`) with `e`, an expression over the `k` input columns of row `m`.
    Dot(usize, Box<Expr>),
}

/// Where a gemv kernel reads a tensor parameter, which fixes its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvRole {
    /// The first argument of `dot`: `[n, k]`, one row per output column.
    Weight,
    /// Read inside `dot` or a reduction, per input column: `Rows<T>` is `[m, k]`,
    /// `[T]` is `[k]`.
    Input,
    /// Read or written per output element: `Rows<T>` is `[m, n]`, `[T]` is `[n]`.
    Output,
}

/// The variables an attention kernel's `mask!` and `score!` see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnVar {
    /// Position of the query token in its sequence (i32). With a cache, queries are the
    /// last `q_len` of `kv_len` positions: `q_pos = kv_len - q_len + i`.
    QPos,
    /// Position of the key/value token (i32), `0..kv_len`.
    KvPos,
    /// Query head (i32).
    Head,
    /// Key/value head (i32): `head / (heads / kv_heads)`.
    KvHead,
    /// Sequence index in the batch (i32).
    Batch,
    /// The scaled score `scale * q . k` (f32); only in `score!`.
    Score,
}

impl AttnVar {
    /// Every variable with its name.
    pub const ALL: [(AttnVar, &'static str); 6] = [
        (AttnVar::QPos, "q_pos"),
        (AttnVar::KvPos, "kv_pos"),
        (AttnVar::Head, "head"),
        (AttnVar::KvHead, "kv_head"),
        (AttnVar::Batch, "batch"),
        (AttnVar::Score, "score"),
    ];

    /// The name in declarations and in the generated C++.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(v, _)| *v == self).map_or("?", |(_, n)| n)
    }

    /// Its value type.
    pub const fn ty(self) -> Ty {
        match self {
            AttnVar::Score => Ty::F32,
            _ => Ty::I32,
        }
    }
}

impl Expr {
    /// Calls `f` on every sub-expression, children first.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        match self {
            Expr::Float(_) | Expr::Int(_) | Expr::Tensor(_) | Expr::Scalar(_) | Expr::Local(_) | Expr::Var(_) => {}
            Expr::Unary(_, a) | Expr::Reduce(_, a) | Expr::Cast(_, a) | Expr::Dot(_, a) => a.visit(f),
            Expr::Binary(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.visit(f)),
            Expr::Select(c, a, b) => {
                c.visit(f);
                a.visit(f);
                b.visit(f);
            }
        }
        f(self);
    }
}

impl Expr {
    /// Whether the expression reads attention variable `v`.
    pub fn uses(&self, v: AttnVar) -> bool {
        let mut found = false;
        self.visit(&mut |e| found |= *e == Expr::Var(v));
        found
    }
}

impl Kernel {
    /// Indices of the tensor parameters.
    pub fn tensor_params(&self) -> impl Iterator<Item = (usize, &Param)> {
        self.params.iter().enumerate().filter(|(_, p)| p.ty.is_tensor())
    }

    /// Whether any parameter uses the generic dtype `T`.
    pub fn is_generic(&self) -> bool {
        self.params.iter().any(|p| matches!(p.ty, ParamTy::Tensor { dtype: DTypeRef::Generic, .. }))
    }

    /// Gemv kernels: the role of each parameter (`None` for scalars and for tensors no
    /// store reads or writes). `parse` rejects a tensor used in two roles, so the first
    /// use found is the only one.
    pub fn gemv_roles(&self) -> Vec<Option<GemvRole>> {
        fn walk(e: &Expr, input: bool, roles: &mut [Option<GemvRole>]) {
            match e {
                Expr::Tensor(i) => {
                    let role = if input { GemvRole::Input } else { GemvRole::Output };
                    roles[*i].get_or_insert(role);
                }
                Expr::Dot(w, a) => {
                    roles[*w].get_or_insert(GemvRole::Weight);
                    walk(a, true, roles);
                }
                Expr::Reduce(_, a) => walk(a, true, roles),
                Expr::Float(_) | Expr::Int(_) | Expr::Scalar(_) | Expr::Local(_) | Expr::Var(_) => {}
                Expr::Unary(_, a) | Expr::Cast(_, a) => walk(a, input, roles),
                Expr::Binary(_, a, b) => {
                    walk(a, input, roles);
                    walk(b, input, roles);
                }
                Expr::Call(_, args) => args.iter().for_each(|a| walk(a, input, roles)),
                Expr::Select(c, a, b) => {
                    walk(c, input, roles);
                    walk(a, input, roles);
                    walk(b, input, roles);
                }
            }
        }
        let mut roles = vec![None; self.params.len()];
        for s in &self.stores {
            roles[s.param] = Some(GemvRole::Output);
            walk(&s.value, false, &mut roles);
        }
        roles
    }

    /// Whether any expression contains a row reduction.
    pub fn has_reductions(&self) -> bool {
        let mut found = false;
        let mut f = |e: &Expr| found |= matches!(e, Expr::Reduce(..));
        self.lets.iter().for_each(|l| l.value.visit(&mut f));
        self.stores.iter().for_each(|s| s.value.visit(&mut f));
        found
    }
}
