//! Argument checking shared by the launcher and the interpreter: the shapes and dtypes
//! passed for a kernel's parameters, resolved to the kernel's problem size.

use crate::dtype::DType;
use crate::ir::{DTypeRef, GemvRole, Kernel, Kind, Layout, ParamTy, ScalarTy};

/// What is passed for one parameter, as far as checking needs to know.
#[derive(Debug, Clone, Copy)]
pub enum ArgDesc<'a> {
    /// A tensor with its dtype and shape.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Dimensions, outermost first.
        shape: &'a [usize],
    },
    /// A scalar of the given type.
    Scalar(ScalarTy),
}

/// The problem size of a launch, from the kind and the argument shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dims {
    /// Elements of every tensor.
    Elementwise {
        /// Element count.
        n: u64,
    },
    /// Rows and columns of the `Rows<T>` tensors.
    Rowwise {
        /// Rows (the product of all but the last dimension).
        rows: u64,
        /// Columns (the last dimension).
        cols: u64,
    },
    /// Attention sizes.
    Attention {
        /// Sequences in the batch (`len(cu_q) - 1`).
        batch: u64,
        /// Query tokens of all sequences (`q.shape[0]`).
        total_q: u64,
        /// Query heads.
        heads: u64,
        /// Key/value heads (divides `heads`).
        kv_heads: u64,
        /// Elements per head.
        head_dim: u64,
        /// Paged K/V: `(pages, page_size, max_pages per sequence)`; `None` when K/V are
        /// contiguous `[total_kv, kv_heads, head_dim]` with `cu_k`.
        paged: Option<(u64, u64, u64)>,
        /// Rows of K/V (`total_kv`, or `pages * page_size`).
        kv_rows: u64,
    },
    /// Matrix-vector sizes: weights `[n, k]`, inputs `[m, k]`, outputs `[m, n]`.
    Gemv {
        /// Input rows (the product of all but the last dimension of the `Rows<T>` tensors).
        m: u64,
        /// Output columns: rows of each weight.
        n: u64,
        /// Input columns: columns of each weight.
        k: u64,
    },
    /// Rotary embedding sizes.
    Rope {
        /// Tokens (the first dimension of q and k).
        tokens: u64,
        /// Heads of q.
        q_heads: u64,
        /// Heads of k.
        k_heads: u64,
        /// Elements per head.
        head_dim: u64,
        /// Rotated pairs per head: `len(inv_freq)`, `rotary_dim / 2`.
        half_rot: u64,
    },
}

/// Arguments that do not fit a kernel's declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Wrong number of arguments.
    #[error("kernel `{kernel}` takes {expected} arguments, got {got}")]
    Count {
        /// Kernel name.
        kernel: String,
        /// Declared parameters.
        expected: usize,
        /// Passed arguments.
        got: usize,
    },
    /// A scalar passed for a tensor, or the reverse.
    #[error("kernel `{kernel}`: parameter `{param}` is {expected}, but {got} was passed")]
    Kind {
        /// Kernel name.
        kernel: String,
        /// Parameter name.
        param: String,
        /// What the declaration says.
        expected: String,
        /// What was passed.
        got: String,
    },
    /// A tensor of the wrong dtype.
    #[error("kernel `{kernel}`: `{param}` must be {expected}, got {got}{hint}")]
    DType {
        /// Kernel name.
        kernel: String,
        /// Parameter name.
        param: String,
        /// Expected dtype.
        expected: String,
        /// Passed dtype.
        got: DType,
        /// What to do.
        hint: String,
    },
    /// A tensor of the wrong rank.
    #[error("kernel `{kernel}`: `{param}` is {layout}, which needs {expected} dimensions, got shape {got:?}")]
    Rank {
        /// Kernel name.
        kernel: String,
        /// Parameter name.
        param: String,
        /// Declared layout.
        layout: &'static str,
        /// Expected rank, in words.
        expected: &'static str,
        /// Passed shape.
        got: Vec<usize>,
    },
    /// Shapes that disagree.
    #[error("kernel `{kernel}`: `{param}` has shape {got:?}, expected {expected}")]
    Shape {
        /// Kernel name.
        kernel: String,
        /// Parameter name.
        param: String,
        /// The expected shape, in words.
        expected: String,
        /// Passed shape.
        got: Vec<usize>,
    },
    /// A tensor with no elements.
    #[error("kernel `{kernel}`: `{param}` has shape {shape:?}, which holds no elements; nothing to launch")]
    Empty {
        /// Kernel name.
        kernel: String,
        /// Parameter name.
        param: String,
        /// Passed shape.
        shape: Vec<usize>,
    },
    /// Element counts past u64 (or the kernels' signed 64-bit indices).
    #[error("kernel `{kernel}`: `{param}` has shape {shape:?}, whose element count overflows 64-bit indexing")]
    Overflow {
        /// Kernel name.
        kernel: String,
        /// Parameter name.
        param: String,
        /// Passed shape.
        shape: Vec<usize>,
    },
}

fn numel(kernel: &str, param: &str, shape: &[usize]) -> Result<u64, ArgError> {
    let mut n: u64 = 1;
    for &d in shape {
        n = n.checked_mul(d as u64).ok_or_else(|| ArgError::Overflow {
            kernel: kernel.into(),
            param: param.into(),
            shape: shape.to_vec(),
        })?;
    }
    if n > i64::MAX as u64 {
        return Err(ArgError::Overflow { kernel: kernel.into(), param: param.into(), shape: shape.to_vec() });
    }
    if n == 0 {
        return Err(ArgError::Empty { kernel: kernel.into(), param: param.into(), shape: shape.to_vec() });
    }
    Ok(n)
}

/// Checks arguments against the declaration; returns the dtype chosen for `T` (if the
/// kernel is generic) and the problem size.
pub fn resolve(kernel: &Kernel, args: &[ArgDesc<'_>]) -> Result<(Option<DType>, Dims), ArgError> {
    let kname = kernel.name.as_str();
    // Attention takes its sequence index tensors after the declared parameters:
    // cu_q and cu_k (contiguous K/V), or cu_q, block_table and kv_lens (paged).
    let declared = kernel.params.len();
    let (args, index) = if kernel.kind == Kind::Attention && (args.len() == declared + 2 || args.len() == declared + 3) {
        args.split_at(declared)
    } else {
        (args, &[][..])
    };
    if args.len() != declared {
        let expected = if kernel.kind == Kind::Attention { declared + 2 } else { declared };
        return Err(ArgError::Count { kernel: kname.into(), expected, got: args.len() });
    }
    let mut generic: Option<(DType, &str)> = None;
    for (p, a) in kernel.params.iter().zip(args) {
        match (p.ty, a) {
            (ParamTy::Tensor { dtype, .. }, ArgDesc::Tensor { dtype: got, .. }) => match dtype {
                DTypeRef::Concrete(want) if want != *got => {
                    return Err(ArgError::DType {
                        kernel: kname.into(),
                        param: p.name.clone(),
                        expected: want.to_string(),
                        got: *got,
                        hint: String::new(),
                    })
                }
                DTypeRef::Concrete(_) => {}
                DTypeRef::Generic => match generic {
                    None => {
                        if !kernel.options.dtypes.contains(got) {
                            let list: Vec<&str> = kernel.options.dtypes.iter().map(|d| d.name()).collect();
                            return Err(ArgError::DType {
                                kernel: kname.into(),
                                param: p.name.clone(),
                                expected: format!("one of [{}]", list.join(", ")),
                                got: *got,
                                hint: "; convert the tensor, or add the dtype to the declaration's `dtype = [...]`".into(),
                            });
                        }
                        generic = Some((*got, &p.name));
                    }
                    Some((first, first_name)) if first != *got => {
                        return Err(ArgError::DType {
                            kernel: kname.into(),
                            param: p.name.clone(),
                            expected: format!("{first} (the dtype T of `{first_name}`)"),
                            got: *got,
                            hint: String::new(),
                        })
                    }
                    Some(_) => {}
                },
            },
            (ParamTy::Scalar(want), ArgDesc::Scalar(got)) if want == *got => {}
            (ParamTy::Scalar(want), other) => {
                return Err(ArgError::Kind {
                    kernel: kname.into(),
                    param: p.name.clone(),
                    expected: format!("a {} scalar", want.ty().name()),
                    got: describe(other),
                })
            }
            (ParamTy::Tensor { .. }, other) => {
                return Err(ArgError::Kind {
                    kernel: kname.into(),
                    param: p.name.clone(),
                    expected: "a tensor".into(),
                    got: describe(other),
                })
            }
        }
    }
    let tensors: Vec<(&str, Layout, &[usize])> = kernel
        .params
        .iter()
        .zip(args)
        .filter_map(|(p, a)| match (p.ty, a) {
            (ParamTy::Tensor { layout, .. }, ArgDesc::Tensor { shape, .. }) => Some((p.name.as_str(), layout, *shape)),
            _ => None,
        })
        .collect();
    let dims = match kernel.kind {
        Kind::Elementwise => {
            let mut n = None;
            for (name, _, shape) in &tensors {
                let m = numel(kname, name, shape)?;
                match n {
                    None => n = Some((m, *name)),
                    Some((n0, first)) if n0 != m => {
                        return Err(ArgError::Shape {
                            kernel: kname.into(),
                            param: name.to_string(),
                            expected: format!("{n0} elements, like `{first}`"),
                            got: shape.to_vec(),
                        })
                    }
                    Some(_) => {}
                }
            }
            Dims::Elementwise { n: n.map(|x| x.0).unwrap_or(0) }
        }
        Kind::Rowwise => {
            let mut rc: Option<(u64, u64, &str)> = None;
            for (name, layout, shape) in &tensors {
                if *layout != Layout::Rows {
                    continue;
                }
                let Some((&cols, lead)) = shape.split_last() else {
                    return Err(ArgError::Rank {
                        kernel: kname.into(),
                        param: name.to_string(),
                        layout: "Rows<T>",
                        expected: "at least 1",
                        got: shape.to_vec(),
                    });
                };
                numel(kname, name, shape)?;
                let rows = lead.iter().map(|&d| d as u64).product::<u64>();
                match rc {
                    None => rc = Some((rows, cols as u64, name)),
                    Some((r0, c0, first)) if (r0, c0) != (rows, cols as u64) => {
                        return Err(ArgError::Shape {
                            kernel: kname.into(),
                            param: name.to_string(),
                            expected: format!("{r0} rows of {c0} columns, like `{first}`"),
                            got: shape.to_vec(),
                        })
                    }
                    Some(_) => {}
                }
            }
            let Some((rows, cols, first)) = rc else {
                return Err(ArgError::Count { kernel: kname.into(), expected: kernel.params.len(), got: args.len() });
            };
            for (name, layout, shape) in &tensors {
                if *layout == Layout::Flat && numel(kname, name, shape)? != cols {
                    return Err(ArgError::Shape {
                        kernel: kname.into(),
                        param: name.to_string(),
                        expected: format!("{cols} elements (the columns of `{first}`)"),
                        got: shape.to_vec(),
                    });
                }
            }
            Dims::Rowwise { rows, cols }
        }
        Kind::Attention => attention_dims(kname, &tensors, index)?,
        Kind::Gemv => gemv_dims(kernel, args)?,
        Kind::Rope(_) => {
            let [(qn, _, q), (kn, _, k), (pn, _, pos), (fname, _, freq)] = tensors[..] else {
                return Err(ArgError::Count { kernel: kname.into(), expected: 5, got: args.len() });
            };
            for (name, shape) in [(qn, q), (kn, k)] {
                if shape.len() != 3 {
                    return Err(ArgError::Rank {
                        kernel: kname.into(),
                        param: name.into(),
                        layout: "Heads<T>",
                        expected: "3 ([tokens, heads, head_dim])",
                        got: shape.to_vec(),
                    });
                }
                numel(kname, name, shape)?;
            }
            if k[0] != q[0] || k[2] != q[2] {
                return Err(ArgError::Shape {
                    kernel: kname.into(),
                    param: kn.into(),
                    expected: format!("[{}, heads, {}] (tokens and head_dim of `{qn}`)", q[0], q[2]),
                    got: k.to_vec(),
                });
            }
            if numel(kname, pn, pos)? != q[0] as u64 {
                return Err(ArgError::Shape {
                    kernel: kname.into(),
                    param: pn.into(),
                    expected: format!("{} positions, one per token", q[0]),
                    got: pos.to_vec(),
                });
            }
            let half_rot = numel(kname, fname, freq)?;
            if 2 * half_rot > q[2] as u64 {
                return Err(ArgError::Shape {
                    kernel: kname.into(),
                    param: fname.into(),
                    expected: format!("at most {} frequencies (rotary_dim = 2 * len <= head_dim {})", q[2] / 2, q[2]),
                    got: freq.to_vec(),
                });
            }
            Dims::Rope { tokens: q[0] as u64, q_heads: q[1] as u64, k_heads: k[1] as u64, head_dim: q[2] as u64, half_rot }
        }
    };
    Ok((generic.map(|g| g.0), dims))
}

/// Shapes of a gemv launch: every weight `[n, k]`; input `Rows<T>` `[.., k]` and output
/// `Rows<T>` `[.., n]` with the same rows `m`; input vectors `[k]`, output vectors `[n]`.
fn gemv_dims(kernel: &Kernel, args: &[ArgDesc<'_>]) -> Result<Dims, ArgError> {
    let kname = kernel.name.as_str();
    let roles = kernel.gemv_roles();
    let tensors: Vec<(&str, Layout, &[usize], Option<GemvRole>)> = kernel
        .params
        .iter()
        .zip(args)
        .zip(&roles)
        .filter_map(|((p, a), r)| match (p.ty, a) {
            (ParamTy::Tensor { layout, .. }, ArgDesc::Tensor { shape, .. }) => Some((p.name.as_str(), layout, *shape, *r)),
            _ => None,
        })
        .collect();
    let mut nk: Option<(u64, u64, &str)> = None;
    for &(name, _, shape, role) in &tensors {
        if role != Some(GemvRole::Weight) {
            continue;
        }
        let [n, k] = shape[..] else {
            return Err(ArgError::Rank {
                kernel: kname.into(),
                param: name.into(),
                layout: "Rows<T>",
                expected: "2 (a weight [n, k])",
                got: shape.to_vec(),
            });
        };
        numel(kname, name, shape)?;
        match nk {
            None => nk = Some((n as u64, k as u64, name)),
            Some((n0, k0, first)) if (n0, k0) != (n as u64, k as u64) => {
                return Err(ArgError::Shape {
                    kernel: kname.into(),
                    param: name.into(),
                    expected: format!("[{n0}, {k0}], like `{first}`"),
                    got: shape.to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    let Some((n, k, wname)) = nk else {
        return Err(ArgError::Count { kernel: kname.into(), expected: kernel.params.len(), got: args.len() });
    };
    let mut rows: Option<(u64, &str)> = None;
    for &(name, layout, shape, role) in &tensors {
        let (want, side) = match role {
            Some(GemvRole::Input) => (k, "input columns"),
            Some(GemvRole::Output) => (n, "output columns"),
            _ => continue,
        };
        if layout == Layout::Flat {
            if numel(kname, name, shape)? != want {
                return Err(ArgError::Shape {
                    kernel: kname.into(),
                    param: name.into(),
                    expected: format!("{want} elements (the {side}: weight `{wname}` is [{n}, {k}])"),
                    got: shape.to_vec(),
                });
            }
            continue;
        }
        numel(kname, name, shape)?;
        let Some((&cols, lead)) = shape.split_last() else {
            return Err(ArgError::Rank {
                kernel: kname.into(),
                param: name.into(),
                layout: "Rows<T>",
                expected: "at least 1",
                got: shape.to_vec(),
            });
        };
        let m = lead.iter().map(|&d| d as u64).product::<u64>();
        let bad = cols as u64 != want || rows.is_some_and(|(m0, _)| m0 != m);
        if bad {
            let m_words = rows.map_or("m rows".to_string(), |(m0, first)| format!("{m0} rows (like `{first}`)"));
            return Err(ArgError::Shape {
                kernel: kname.into(),
                param: name.into(),
                expected: format!("{m_words} of {want} columns (the {side}: weight `{wname}` is [{n}, {k}])"),
                got: shape.to_vec(),
            });
        }
        rows.get_or_insert((m, name));
    }
    let Some((m, _)) = rows else {
        return Err(ArgError::Count { kernel: kname.into(), expected: kernel.params.len(), got: args.len() });
    };
    Ok(Dims::Gemv { m, n, k })
}

fn describe(a: &ArgDesc<'_>) -> String {
    match a {
        ArgDesc::Tensor { dtype, shape } => format!("a {dtype} tensor of shape {shape:?}"),
        ArgDesc::Scalar(s) => format!("a {} scalar", s.ty().name()),
    }
}

fn i32_vector<'a>(kname: &str, name: &str, a: &ArgDesc<'a>, len: Option<u64>, what: &str) -> Result<&'a [usize], ArgError> {
    match *a {
        ArgDesc::Tensor { dtype: DType::I32, shape } => {
            let n = numel(kname, name, shape)?;
            if let Some(want) = len {
                if n != want {
                    return Err(ArgError::Shape { kernel: kname.into(), param: name.into(), expected: what.into(), got: shape.to_vec() });
                }
            }
            Ok(shape)
        }
        ArgDesc::Tensor { dtype, .. } => {
            Err(ArgError::DType { kernel: kname.into(), param: name.into(), expected: "i32".into(), got: dtype, hint: String::new() })
        }
        other => Err(ArgError::Kind {
            kernel: kname.into(),
            param: name.into(),
            expected: format!("an i32 tensor ({what})"),
            got: describe(&other),
        }),
    }
}

/// Shapes of an attention launch: q/out `[total_q, heads, d]`, k/v `[total_kv, kv_heads,
/// d]` or `[pages, page_size, kv_heads, d]`, and the index tensors after them.
fn attention_dims(kname: &str, tensors: &[(&str, Layout, &[usize])], index: &[ArgDesc<'_>]) -> Result<Dims, ArgError> {
    let [(qn, _, q), (kn, _, k), (vn, _, v), (on, _, o)] = tensors[..] else {
        return Err(ArgError::Count { kernel: kname.into(), expected: 4, got: tensors.len() });
    };
    if q.len() != 3 {
        return Err(ArgError::Rank {
            kernel: kname.into(),
            param: qn.into(),
            layout: "Heads<T>",
            expected: "3 ([tokens, heads, head_dim])",
            got: q.to_vec(),
        });
    }
    numel(kname, qn, q)?;
    if o != q {
        return Err(ArgError::Shape {
            kernel: kname.into(),
            param: on.into(),
            expected: format!("{q:?}, the shape of `{qn}`"),
            got: o.to_vec(),
        });
    }
    let paged = match k.len() {
        3 => false,
        4 => true,
        _ => {
            return Err(ArgError::Rank {
                kernel: kname.into(),
                param: kn.into(),
                layout: "Heads<T>",
                expected: "3 ([tokens, kv_heads, head_dim]) or 4 (paged: [pages, page_size, kv_heads, head_dim])",
                got: k.to_vec(),
            })
        }
    };
    numel(kname, kn, k)?;
    if paged && !k[1].is_power_of_two() {
        // The kernels find a position's page with a shift and a mask.
        return Err(ArgError::Shape {
            kernel: kname.into(),
            param: kn.into(),
            expected: "[pages, page_size, kv_heads, head_dim] with a power-of-two page_size (16 or 32 are usual)".into(),
            got: k.to_vec(),
        });
    }
    if v != k {
        return Err(ArgError::Shape {
            kernel: kname.into(),
            param: vn.into(),
            expected: format!("{k:?}, the shape of `{kn}`"),
            got: v.to_vec(),
        });
    }
    let (kv_heads, d) = (k[k.len() - 2] as u64, k[k.len() - 1] as u64);
    let (heads, hd) = (q[1] as u64, q[2] as u64);
    if d != hd || heads % kv_heads != 0 {
        let mut want = k.to_vec();
        let n = want.len();
        want[n - 1] = q[2];
        return Err(ArgError::Shape {
            kernel: kname.into(),
            param: kn.into(),
            expected: format!("head_dim {hd} like `{qn}` and a number of kv heads that divides its {heads} heads (shape like {want:?})"),
            got: k.to_vec(),
        });
    }
    let want_index = if paged { 3 } else { 2 };
    if index.len() != want_index {
        let names = if paged { "cu_q, block_table and kv_lens" } else { "cu_q and cu_k" };
        return Err(ArgError::Kind {
            kernel: kname.into(),
            param: kn.into(),
            expected: format!(
                "{} K/V, with the index tensors {names} after the declared parameters",
                if paged { "paged" } else { "contiguous" }
            ),
            got: format!("{} index tensors", index.len()),
        });
    }
    let cu_q = i32_vector(kname, "cu_q", &index[0], None, "")?;
    let batch = numel(kname, "cu_q", cu_q)?.saturating_sub(1);
    if batch == 0 {
        return Err(ArgError::Shape {
            kernel: kname.into(),
            param: "cu_q".into(),
            expected: "batch + 1 >= 2 offsets".into(),
            got: cu_q.to_vec(),
        });
    }
    let (paged, kv_rows) = if paged {
        let bt = i32_vector(kname, "block_table", &index[1], None, "")?;
        if bt.len() != 2 || bt[0] as u64 != batch {
            return Err(ArgError::Shape {
                kernel: kname.into(),
                param: "block_table".into(),
                expected: format!("[{batch}, max_pages] (one row per sequence)"),
                got: bt.to_vec(),
            });
        }
        i32_vector(kname, "kv_lens", &index[2], Some(batch), &format!("{batch} lengths, one per sequence"))?;
        (Some((k[0] as u64, k[1] as u64, bt[1] as u64)), k[0] as u64 * k[1] as u64)
    } else {
        i32_vector(kname, "cu_k", &index[1], Some(batch + 1), &format!("{} offsets (batch + 1, like cu_q)", batch + 1))?;
        (None, k[0] as u64)
    };
    Ok(Dims::Attention { batch, total_q: q[0] as u64, heads, kv_heads, head_dim: hd, paged, kv_rows })
}
