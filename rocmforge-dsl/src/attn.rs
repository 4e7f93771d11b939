//! Attention modifiers: their C++ and what the tiled kernels may skip.
//!
//! A `mask!` condition is split at `&&`. Conjuncts that are linear bounds on
//! `kv_pos - q_pos` with a position-free right side (`q_pos >= kv_pos`,
//! `q_pos - kv_pos < window`, ...) give the band of visible positions, which lets the
//! kernels skip key/value tiles that are wholly masked and leave the per-element test
//! out of tiles that are wholly visible. Any other conjunct (a user mask the analysis
//! cannot bound) is evaluated on every element of every tile: always correct, never
//! faster than the band allows.

use crate::ir::{AttnVar, BinOp, CastTo, Expr, Kernel, UnOp};

/// The visible band `d_min <= kv_pos - q_pos <= d_max` implied by a mask.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Band {
    /// Upper bound on `kv_pos - q_pos` (causal: 0), as an i32 expression.
    pub d_max: Option<Expr>,
    /// Lower bound on `kv_pos - q_pos` (a sliding window: `1 - window`).
    pub d_min: Option<Expr>,
    /// Whether some conjunct is not a band bound: every element must be tested.
    pub opaque: bool,
}

/// `cq * q_pos + ckv * kv_pos + rest`, with `rest` free of attention variables.
struct Linear {
    cq: i64,
    ckv: i64,
    rest: Vec<(i64, Expr)>,
}

fn position_free(e: &Expr) -> bool {
    AttnVar::ALL.iter().all(|(v, _)| !e.uses(*v))
}

fn linear(e: &Expr) -> Option<Linear> {
    match e {
        Expr::Var(AttnVar::QPos) => Some(Linear { cq: 1, ckv: 0, rest: vec![] }),
        Expr::Var(AttnVar::KvPos) => Some(Linear { cq: 0, ckv: 1, rest: vec![] }),
        Expr::Binary(op @ (BinOp::Add | BinOp::Sub), a, b) => {
            let (a, b) = (linear(a)?, linear(b)?);
            let s = if *op == BinOp::Add { 1 } else { -1 };
            let mut rest = a.rest;
            rest.extend(b.rest.into_iter().map(|(c, e)| (s * c, e)));
            Some(Linear { cq: a.cq + s * b.cq, ckv: a.ckv + s * b.ckv, rest })
        }
        other if position_free(other) && !matches!(other, Expr::Float(_)) => Some(Linear { cq: 0, ckv: 0, rest: vec![(1, other.clone())] }),
        _ => None,
    }
}

fn sum(terms: Vec<(i64, Expr)>, negate: bool, extra: i64) -> Expr {
    let mut acc = Expr::Int(extra);
    for (c, e) in terms {
        let c = if negate { -c } else { c };
        let op = if c > 0 { BinOp::Add } else { BinOp::Sub };
        acc = Expr::Binary(op, Box::new(acc), Box::new(e));
    }
    acc
}

fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::Binary(BinOp::And, a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        other => out.push(other),
    }
}

/// The band of a kernel's mask (no mask: everything visible, no bounds).
pub fn band(kernel: &Kernel) -> Band {
    let Some(mask) = &kernel.mask else { return Band::default() };
    let mut parts = Vec::new();
    conjuncts(mask, &mut parts);
    let mut band = Band::default();
    for c in parts {
        let bound = match c {
            Expr::Binary(op, a, b) if op.is_comparison() && !matches!(op, BinOp::Eq | BinOp::Ne) => {
                linear(a).zip(linear(b)).map(|(a, b)| (*op, a, b))
            }
            _ => None,
        };
        // a op b  <=>  (cq_a - cq_b) q + (ckv_a - ckv_b) kv + (rest_a - rest_b) op 0.
        let Some((op, a, b)) = bound else {
            band.opaque = true;
            continue;
        };
        let (cq, ckv) = (a.cq - b.cq, a.ckv - b.ckv);
        let mut rest = a.rest;
        rest.extend(b.rest.into_iter().map(|(c, e)| (-c, e)));
        // Normalise to d = kv - q: with (cq, ckv) = (-1, 1), `d + rest op 0`; with
        // (1, -1), `-d + rest op 0`, i.e. `d - rest op' 0` with the comparison flipped.
        let (op, rest_sign) = match (cq, ckv) {
            (-1, 1) => (op, false),
            (1, -1) => (flip(op), true),
            _ => {
                band.opaque = true;
                continue;
            }
        };
        // d op R, where R = -rest (or +rest after flipping).
        let r = |extra| sum(rest.clone(), !rest_sign, extra);
        match op {
            BinOp::Le => band.d_max = Some(tighter(band.d_max.take(), r(0), BinOp::Le)),
            BinOp::Lt => band.d_max = Some(tighter(band.d_max.take(), r(-1), BinOp::Le)),
            BinOp::Ge => band.d_min = Some(tighter(band.d_min.take(), r(0), BinOp::Ge)),
            BinOp::Gt => band.d_min = Some(tighter(band.d_min.take(), r(1), BinOp::Ge)),
            _ => band.opaque = true,
        }
    }
    band
}

fn flip(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        other => other,
    }
}

/// Two bounds of the same side combine to the tighter one (min for upper, max for lower).
fn tighter(old: Option<Expr>, new: Expr, side: BinOp) -> Expr {
    match old {
        None => new,
        Some(o) => {
            let pick_new = if side == BinOp::Le { BinOp::Lt } else { BinOp::Gt };
            Expr::Select(Box::new(Expr::Binary(pick_new, Box::new(new.clone()), Box::new(o.clone()))), Box::new(new), Box::new(o))
        }
    }
}

/// C++ for an attention expression: variables by name, scalars as `s_<name>`.
pub fn cpp(kernel: &Kernel, e: &Expr) -> String {
    let go = |a: &Expr| cpp(kernel, a);
    match e {
        Expr::Float(v) => crate::codegen::float_lit(*v),
        Expr::Int(v) => format!("{v}"),
        Expr::Scalar(i) => format!("s_{}", kernel.params[*i].name),
        Expr::Var(v) => v.name().to_string(),
        Expr::Unary(UnOp::Neg, a) => format!("(-{})", go(a)),
        Expr::Unary(UnOp::Not, a) => format!("(!{})", go(a)),
        Expr::Binary(op, a, b) => format!("({} {} {})", go(a), op.symbol(), go(b)),
        Expr::Call(f, args) => format!("{}({})", f.c_name(), args.iter().map(go).collect::<Vec<_>>().join(", ")),
        Expr::Select(c, a, b) => format!("({} ? {} : {})", go(c), go(a), go(b)),
        Expr::Cast(to, a) => match to {
            CastTo::F32 => format!("((float)({}))", go(a)),
            CastTo::I32 => format!("((int)({}))", go(a)),
            CastTo::U32 => format!("((unsigned int)({}))", go(a)),
            CastTo::F16 => format!("rf_f16_to_f32(rf_f32_to_f16({}))", go(a)),
            CastTo::BF16 => format!("rf_bf16_to_f32(rf_f32_to_bf16({}))", go(a)),
        },
        // Lets are inlined by the parser; tensors and reductions cannot appear.
        Expr::Local(_) | Expr::Tensor(_) | Expr::Reduce(..) | Expr::Dot(..) => "0".to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn kernel(body: &str) -> Kernel {
        let item = format!("fn a(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32, window: i32) {{ {body} }}");
        crate::parse::parse_str("attention(dtype = [bf16], head_dim = [64])", &item).unwrap()
    }

    #[test]
    fn causal_and_window_are_bands() {
        let k = kernel("mask!(q_pos >= kv_pos && q_pos - kv_pos < window);");
        let b = band(&k);
        assert!(!b.opaque);
        assert_eq!(cpp(&k, b.d_max.as_ref().unwrap()), "0");
        // q - kv < w  <=>  kv - q > -w  <=>  kv - q >= 1 - w
        assert_eq!(cpp(&k, b.d_min.as_ref().unwrap()), "(1 - s_window)");
    }

    #[test]
    fn reversed_and_strict_forms() {
        let k = kernel("mask!(kv_pos < q_pos + 1);");
        let b = band(&k);
        assert!(!b.opaque);
        assert_eq!(cpp(&k, b.d_max.as_ref().unwrap()), "(-1 + 1)");
        assert!(b.d_min.is_none());
    }

    #[test]
    fn other_masks_are_opaque() {
        let k = kernel("mask!(q_pos >= kv_pos && (kv_pos - kv_pos / 4 * 4) != 3);");
        let b = band(&k);
        assert!(b.opaque);
        assert!(b.d_max.is_some());
        let k = kernel("mask!(head < 2);");
        assert!(band(&k).opaque);
    }
}
