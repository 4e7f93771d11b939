//! `#[gpu_kernel]` declaration (syn) to validated [`Kernel`] IR.
//!
//! Parsing and validation are one pass over the syn nodes, so every error is a
//! `syn::Error` spanned on the offending token. Errors accumulate: a declaration with
//! three mistakes reports three messages.

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Meta, Token};

use crate::dtype::DType;
use crate::ir::*;
use crate::spec::{ATTENTION_BLOCK, GEMV_BLOCK};

const ALLOWED_KINDS: &str = "elementwise, rowwise, rope, attention, gemv";
const ALLOWED_PARAM_TYPES: &str =
    "&[T], &mut [T], &Rows<T>, &mut Rows<T>, &Heads<T>, &mut Heads<T>, f32, i32, u32 (T: f32, f16, bf16, i32, u32, or the generic T)";
const ALLOWED_FLOAT_DTYPES: &str = "f32, f16, bf16";

/// Parses a declaration given as source text (the attribute's arguments and the item).
///
/// The macro embeds this text in the launcher, so that the runtime holds the same IR
/// the macro validated, with no second encoding of it.
pub fn parse_str(attr: &str, item: &str) -> syn::Result<Kernel> {
    let attr: TokenStream = syn::parse_str(attr)?;
    let item: syn::ItemFn = syn::parse_str(item)?;
    parse_kernel(attr, &item)
}

/// Parses and validates one declaration.
pub fn parse_kernel(attr: TokenStream, item: &syn::ItemFn) -> syn::Result<Kernel> {
    let mut cx = Cx::default();
    let (kind, options) = parse_attr(&mut cx, attr, item);
    let kernel = parse_fn(&mut cx, kind, options, item);
    match cx.errors {
        Some(e) => Err(e),
        None => Ok(kernel),
    }
}

#[derive(Default)]
struct Cx {
    errors: Option<syn::Error>,
}

impl Cx {
    fn error(&mut self, node: impl ToTokens, msg: impl std::fmt::Display) {
        let e = syn::Error::new_spanned(node, msg);
        match &mut self.errors {
            Some(all) => all.combine(e),
            None => self.errors = Some(e),
        }
    }
    fn error_at(&mut self, span: proc_macro2::Span, msg: impl std::fmt::Display) {
        let e = syn::Error::new(span, msg);
        match &mut self.errors {
            Some(all) => all.combine(e),
            None => self.errors = Some(e),
        }
    }
}

fn parse_attr(cx: &mut Cx, attr: TokenStream, item: &syn::ItemFn) -> (Kind, Options) {
    let mut options = Options { dtypes: Vec::new(), blocks: Vec::new(), head_dims: Vec::new(), block_q: 128, block_kv: None, debug: false };
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr) {
        Ok(m) => m,
        Err(e) => {
            cx.error_at(e.span(), format!("{e}; expected `#[gpu_kernel(KIND(options))]` with KIND one of {ALLOWED_KINDS}"));
            return (Kind::Elementwise, options);
        }
    };
    let mut iter = metas.iter();
    let Some(kind_meta) = iter.next() else {
        cx.error(&item.sig.ident, format!("missing kernel kind: write `#[gpu_kernel(KIND)]` with KIND one of {ALLOWED_KINDS}"));
        return (Kind::Elementwise, options);
    };
    for extra in iter {
        if extra.path().is_ident("debug") && matches!(extra, Meta::Path(_)) {
            options.debug = true;
        } else {
            cx.error(extra, "unexpected argument: after the kind only `debug` is allowed");
        }
    }
    let kind_name = kind_meta.path().get_ident().map(|i| i.to_string()).unwrap_or_default();
    let mut kind = match kind_name.as_str() {
        "elementwise" => Kind::Elementwise,
        "rowwise" => Kind::Rowwise,
        "rope" => Kind::Rope(RopeLayout::Neox),
        "attention" => Kind::Attention,
        "gemv" => Kind::Gemv,
        _ => {
            cx.error(kind_meta.path(), format!("unknown kernel kind `{}`; allowed: {ALLOWED_KINDS}", kind_meta.path().to_token_stream()));
            return (Kind::Elementwise, options);
        }
    };
    let nested = match kind_meta {
        Meta::Path(_) => Punctuated::new(),
        Meta::List(list) => match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(n) => n,
            Err(e) => {
                cx.error_at(e.span(), format!("{e}; options are `name = value` or `debug`"));
                Punctuated::new()
            }
        },
        Meta::NameValue(nv) => {
            cx.error(nv, format!("write the kind as `{kind_name}` or `{kind_name}(options)`"));
            Punctuated::new()
        }
    };
    let allowed: &[&str] = match kind {
        Kind::Elementwise => &["dtype", "block", "debug"],
        Kind::Rowwise => &["dtype", "block", "debug"],
        Kind::Rope(_) => &["layout", "dtype", "head_dim", "block", "debug"],
        Kind::Attention => &["dtype", "head_dim", "block_q", "block_kv", "debug"],
        Kind::Gemv => &["dtype", "block", "debug"],
    };
    let mut seen = Vec::new();
    for meta in &nested {
        let name = meta.path().get_ident().map(|i| i.to_string()).unwrap_or_default();
        if !allowed.contains(&name.as_str()) {
            cx.error(
                meta.path(),
                format!("unknown option `{}` for `{kind_name}`; allowed: {}", meta.path().to_token_stream(), allowed.join(", ")),
            );
            continue;
        }
        if seen.contains(&name) {
            cx.error(meta.path(), format!("option `{name}` given twice"));
            continue;
        }
        seen.push(name.clone());
        if name == "debug" {
            if matches!(meta, Meta::Path(_)) {
                options.debug = true;
            } else {
                cx.error(meta, "`debug` takes no value");
            }
            continue;
        }
        let Meta::NameValue(nv) = meta else {
            cx.error(meta, format!("write `{name} = value`"));
            continue;
        };
        let values = list_values(&nv.value);
        match name.as_str() {
            "dtype" => {
                for v in values {
                    let s = v.to_token_stream().to_string();
                    match DType::from_name(&s) {
                        Some(d) if d.is_float() => {
                            if options.dtypes.contains(&d) {
                                cx.error(v, format!("dtype `{d}` listed twice"));
                            } else {
                                options.dtypes.push(d);
                            }
                        }
                        _ => cx.error(v, format!("`{s}` cannot be a value of the generic dtype T; allowed: {ALLOWED_FLOAT_DTYPES}")),
                    }
                }
            }
            "block" => {
                for v in values {
                    if let Some(b) = int_value(cx, v) {
                        if !(64..=1024).contains(&b) || !b.is_power_of_two() {
                            cx.error(v, format!("block size {b} is not allowed: it must be a power of two from 64 to 1024 (a whole number of 64-wide wavefronts)"));
                        } else if options.blocks.contains(&(b as u32)) {
                            cx.error(v, format!("block size {b} listed twice"));
                        } else {
                            options.blocks.push(b as u32);
                        }
                    }
                }
                if kind != Kind::Rowwise && options.blocks.len() > 1 {
                    cx.error(&nv.value, format!("`{kind_name}` takes one block size, e.g. `block = 256`"));
                }
            }
            "head_dim" if kind == Kind::Attention => {
                for v in values {
                    if let Some(h) = int_value(cx, v) {
                        if h % 16 != 0 || !(16..=256).contains(&h) {
                            cx.error(
                                v,
                                format!("head_dim {h} is not supported by attention: it must be a multiple of 16 from 16 to 256 (the matrix-core tile depth), e.g. 64, 80, 96, 128, 256"),
                            );
                        } else if options.head_dims.contains(&(h as u32)) {
                            cx.error(v, format!("head_dim {h} listed twice"));
                        } else {
                            options.head_dims.push(h as u32);
                        }
                    }
                }
            }
            "block_q" | "block_kv" => {
                let allowed: &[u64] = if name == "block_q" { &[64, 128] } else { &[32, 64, 128] };
                match values.as_slice() {
                    [v] => {
                        if let Some(b) = int_value(cx, v) {
                            if !allowed.contains(&b) {
                                cx.error(v, format!("{name} = {b} is not supported; allowed: {allowed:?}"));
                            } else if name == "block_q" {
                                options.block_q = b as u32;
                            } else {
                                options.block_kv = Some(b as u32);
                            }
                        }
                    }
                    _ => cx.error(&nv.value, format!("`{name}` takes one value, one of {allowed:?}")),
                }
            }
            "head_dim" => {
                for v in values {
                    if let Some(h) = int_value(cx, v) {
                        if h % 2 != 0 {
                            cx.error(
                                v,
                                format!("head_dim {h} is odd: rotary embedding rotates pairs, so head_dim must be even (2 to 1024)"),
                            );
                        } else if !(2..=1024).contains(&h) {
                            cx.error(v, format!("head_dim {h} is out of range: it must be even, from 2 to 1024"));
                        } else if options.head_dims.contains(&(h as u32)) {
                            cx.error(v, format!("head_dim {h} listed twice"));
                        } else {
                            options.head_dims.push(h as u32);
                        }
                    }
                }
            }
            "layout" => {
                let s = nv.value.to_token_stream().to_string();
                match s.as_str() {
                    "neox" => kind = Kind::Rope(RopeLayout::Neox),
                    "gptj" => kind = Kind::Rope(RopeLayout::Gptj),
                    _ => cx.error(&nv.value, format!("unknown rope layout `{s}`; allowed: neox (half split), gptj (interleaved)")),
                }
            }
            _ => {}
        }
    }
    if options.blocks.is_empty() {
        options.blocks = match kind {
            Kind::Rowwise => vec![256, 1024],
            Kind::Elementwise | Kind::Rope(_) => vec![256],
            Kind::Attention => vec![ATTENTION_BLOCK],
            Kind::Gemv => vec![GEMV_BLOCK],
        };
    }
    if kind == Kind::Attention && options.head_dims.is_empty() && !seen.iter().any(|s| s == "head_dim") {
        cx.error(kind_meta, "attention needs `head_dim = [...]`: the head dims to specialize for (multiples of 16, e.g. [64, 128])");
    }
    if matches!(kind, Kind::Rope(_)) && options.head_dims.is_empty() && !seen.iter().any(|s| s == "head_dim") {
        cx.error(kind_meta, "rope needs `head_dim = [...]`: the head dims to specialize for (even, e.g. [64, 128])");
    }
    (kind, options)
}

fn list_values(e: &syn::Expr) -> Vec<&syn::Expr> {
    match e {
        syn::Expr::Array(a) => a.elems.iter().collect(),
        other => vec![other],
    }
}

fn int_value(cx: &mut Cx, e: &syn::Expr) -> Option<u64> {
    if let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) = e {
        if let Ok(v) = i.base10_parse::<u64>() {
            return Some(v);
        }
    }
    cx.error(e, "expected a positive integer literal");
    None
}

#[derive(Clone, Copy)]
struct Typed {
    ty: Ty,
    row: bool,
    int_lit: Option<i64>,
}

struct Body<'a> {
    kind: Kind,
    params: &'a [Param],
    param_index: HashMap<String, usize>,
    lets: Vec<Let>,
    let_rows: Vec<bool>,
    /// Outputs with a `*out = ...` statement, valid or not (one mistake, one message).
    assigned: Vec<usize>,
    /// Gemv: the role found so far for each parameter (one role per tensor).
    roles: Vec<Option<GemvRole>>,
    /// Gemv: `dot` products over all stores.
    dots: usize,
}

fn parse_fn(cx: &mut Cx, kind: Kind, options: Options, item: &syn::ItemFn) -> Kernel {
    let sig = &item.sig;
    if !sig.generics.params.is_empty() {
        cx.error(
            &sig.generics,
            "a kernel takes no generic parameters: the generic dtype `T` is declared with `dtype = [...]` in the kind options",
        );
    }
    if let syn::ReturnType::Type(_, ty) = &sig.output {
        cx.error(ty, "a kernel returns nothing: write results through `&mut` tensor parameters");
    }
    if let Some(a) = &sig.asyncness {
        cx.error(a, "a kernel cannot be async");
    }
    if let Some(u) = &sig.unsafety {
        cx.error(u, "a kernel is declared without `unsafe`; its launcher checks every argument");
    }

    let mut params: Vec<Param> = Vec::new();
    let mut param_index = HashMap::new();
    let mut generic_span = None;
    for input in &sig.inputs {
        let syn::FnArg::Typed(pt) = input else {
            cx.error(input, "a kernel has no `self` parameter");
            continue;
        };
        let syn::Pat::Ident(pi) = &*pt.pat else {
            cx.error(&pt.pat, "a parameter must be a plain name");
            continue;
        };
        let name = pi.ident.to_string();
        let Some(ty) = parse_param_ty(cx, &pt.ty) else { continue };
        if let ParamTy::Tensor { dtype: DTypeRef::Generic, .. } = ty {
            generic_span.get_or_insert_with(|| pt.ty.span());
        }
        if param_index.contains_key(&name) {
            cx.error(&pi.ident, format!("duplicate parameter `{name}`: each parameter needs its own name"));
            continue;
        }
        param_index.insert(name.clone(), params.len());
        params.push(Param { name, ty });
    }

    match (generic_span, options.dtypes.is_empty()) {
        (Some(span), true) => {
            cx.error_at(span, format!("the generic dtype `T` needs `dtype = [...]` in the kind options (allowed: {ALLOWED_FLOAT_DTYPES})"))
        }
        (None, false) => cx.error(&sig.ident, "`dtype = [...]` is given but no parameter uses the generic dtype `T`"),
        _ => {}
    }

    check_param_layouts(cx, kind, &params, sig);

    let roles = vec![None; params.len()];
    let mut body =
        Body { kind, params: &params, param_index, lets: Vec::new(), let_rows: Vec::new(), assigned: Vec::new(), roles, dots: 0 };
    let mut stores: Vec<Store> = Vec::new();
    let mut mods = AttnMods::default();
    if kind == Kind::Attention {
        for stmt in &item.block.stmts {
            parse_attention_stmt(cx, &mut body, &mut mods, stmt);
        }
    } else if matches!(kind, Kind::Rope(_)) {
        if let Some(first) = item.block.stmts.first() {
            cx.error(first, "a rope kernel's body must be empty: the rotation is fixed by the kind; frequency scaling comes in through `inv_freq` and `mscale`");
        }
    } else {
        for stmt in &item.block.stmts {
            parse_stmt(cx, &mut body, &mut stores, stmt);
        }
        let writes_any = params.iter().any(|p| matches!(p.ty, ParamTy::Tensor { mutable: true, .. }));
        if !writes_any {
            cx.error(&sig.ident, "kernel has no output: declare a `&mut` tensor parameter and write it with `*out = ...;`");
        }
        if kind == Kind::Gemv {
            check_gemv_uses(cx, &body, sig);
        }
        for (i, p) in params.iter().enumerate() {
            if matches!(p.ty, ParamTy::Tensor { mutable: true, .. }) && !body.assigned.contains(&i) {
                let span = sig.inputs.iter().nth(i).map(|a| a.span()).unwrap_or_else(|| sig.ident.span());
                cx.error_at(
                    span,
                    format!("`{}` is declared `&mut` but never written: assign it with `*{} = ...;` or declare it `&`", p.name, p.name),
                );
            }
        }
    }
    // Gemv stores were stored with their `let`s inlined (a value's role, input column or
    // output element, depends on where it is used, not where it is bound).
    let lets = if kind == Kind::Gemv { Vec::new() } else { body.lets };
    let inline = |e: Option<Expr>| e.map(|e| inline_lets(&e, &lets));
    let (mask, score_mod) = (inline(mods.mask), inline(mods.score));
    Kernel { name: sig.ident.to_string(), kind, options, params, lets, stores, mask, score_mod }
}

#[derive(Default)]
struct AttnMods {
    mask: Option<Expr>,
    score: Option<Expr>,
}

/// `e` with every `let` reference replaced by its value (attention modifiers are
/// evaluated per score, where a flat expression is what codegen and analysis want).
fn inline_lets(e: &Expr, lets: &[Let]) -> Expr {
    let go = |a: &Expr| Box::new(inline_lets(a, lets));
    match e {
        Expr::Local(i) => lets.get(*i).map_or(Expr::Float(f64::NAN), |l| inline_lets(&l.value, lets)),
        Expr::Unary(op, a) => Expr::Unary(*op, go(a)),
        Expr::Binary(op, a, b) => Expr::Binary(*op, go(a), go(b)),
        Expr::Call(f, args) => Expr::Call(*f, args.iter().map(|a| inline_lets(a, lets)).collect()),
        Expr::Reduce(op, a) => Expr::Reduce(*op, go(a)),
        Expr::Dot(w, a) => Expr::Dot(*w, go(a)),
        Expr::Select(c, a, b) => Expr::Select(go(c), go(a), go(b)),
        Expr::Cast(t, a) => Expr::Cast(*t, go(a)),
        other => other.clone(),
    }
}

const ATTENTION_STMTS: &str = "allowed in an attention body: `let name = expr;`, `mask!(condition);` (true keeps the score) and `score!(expr);` (the new score), over q_pos, kv_pos, head, kv_head, batch, score and the scalar parameters";

fn parse_attention_stmt(cx: &mut Cx, body: &mut Body<'_>, mods: &mut AttnMods, stmt: &syn::Stmt) {
    let mac = match stmt {
        syn::Stmt::Macro(m) => &m.mac,
        syn::Stmt::Expr(syn::Expr::Macro(m), _) => &m.mac,
        syn::Stmt::Local(_) => {
            let mut none = Vec::new();
            parse_stmt(cx, body, &mut none, stmt);
            return;
        }
        other => {
            cx.error(other, format!("unsupported statement; {ATTENTION_STMTS}"));
            return;
        }
    };
    let which = mac.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
    let expr: syn::Expr = match mac.parse_body() {
        Ok(e) => e,
        Err(e) => {
            cx.error_at(e.span(), format!("{e}; `{which}!` takes one expression"));
            return;
        }
    };
    let Some((e, t)) = parse_expr(cx, body, &expr) else { return };
    match which.as_str() {
        "mask" => {
            if t.ty != Ty::Bool {
                cx.error(&expr, format!("`mask!` takes a condition (a comparison), found {}", t.ty.name()));
            } else if inline_lets(&e, &body.lets).uses(AttnVar::Score) {
                cx.error(
                    &expr,
                    "`mask!` cannot read `score`: it decides which positions are visible before scores exist; change scores with `score!`",
                );
            } else if mods.mask.is_some() {
                cx.error(&mac.path, "`mask!` given twice; combine the conditions with `&&`");
            } else {
                mods.mask = Some(e);
            }
        }
        "score" => {
            if t.ty != Ty::F32 {
                cx.error(&expr, format!("`score!` takes the new score (f32), found {}; convert with `as f32`", t.ty.name()));
            } else if mods.score.is_some() {
                cx.error(&mac.path, "`score!` given twice; compose the changes in one expression");
            } else {
                mods.score = Some(e);
            }
        }
        _ => cx.error(&mac.path, format!("unknown macro `{which}!`; {ATTENTION_STMTS}")),
    }
}

fn check_param_layouts(cx: &mut Cx, kind: Kind, params: &[Param], sig: &syn::Signature) {
    let span_of = |i: usize| sig.inputs.iter().nth(i).map(|a| a.span()).unwrap_or_else(|| sig.ident.span());
    match kind {
        Kind::Elementwise => {
            for (i, p) in params.iter().enumerate() {
                if let ParamTy::Tensor { layout, .. } = p.ty {
                    if layout != Layout::Flat {
                        cx.error_at(
                            span_of(i),
                            format!(
                                "elementwise kernels take flat tensors `&[T]`; `{}` is {}: use `rowwise` for rows or `rope` for heads",
                                p.name,
                                layout.spelling()
                            ),
                        );
                    }
                }
            }
        }
        Kind::Rowwise => {
            let mut any_rows = false;
            for (i, p) in params.iter().enumerate() {
                if let ParamTy::Tensor { layout, mutable, .. } = p.ty {
                    match layout {
                        Layout::Rows => any_rows = true,
                        Layout::Heads => cx.error_at(
                            span_of(i),
                            format!("rowwise kernels take `Rows<T>` and `&[T]` (a vector over the columns); `{}` is Heads<T>", p.name),
                        ),
                        Layout::Flat if mutable => cx.error_at(
                            span_of(i),
                            format!("`{}` is a vector over the columns; a rowwise output must be `&mut Rows<T>`", p.name),
                        ),
                        Layout::Flat => {}
                    }
                }
            }
            if !any_rows {
                cx.error(&sig.ident, "a rowwise kernel needs at least one `Rows<T>` tensor: it fixes the rows and columns");
            }
        }
        Kind::Attention => {
            let t = |mutable| ParamTy::Tensor { dtype: DTypeRef::Generic, layout: Layout::Heads, mutable };
            let shape_ok = params.len() >= 5
                && params[..3].iter().all(|p| p.ty == t(false))
                && params[3].ty == t(true)
                && params[4].ty == ParamTy::Scalar(ScalarTy::F32)
                && params[5..].iter().all(|p| !p.ty.is_tensor());
            if !shape_ok {
                cx.error(
                    &sig.inputs,
                    "an attention kernel takes `(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32, ...)`, then only scalars (f32, i32, u32) for its modifiers; k and v are [tokens, kv_heads, head_dim] or paged [pages, page_size, kv_heads, head_dim]",
                );
            }
            for (i, p) in params.iter().enumerate() {
                if AttnVar::ALL.iter().any(|(_, n)| *n == p.name) {
                    cx.error_at(span_of(i), format!("`{}` names a built-in attention variable; choose another parameter name", p.name));
                }
            }
        }
        Kind::Gemv => {
            for (i, p) in params.iter().enumerate() {
                if let ParamTy::Tensor { layout, mutable, .. } = p.ty {
                    match layout {
                        Layout::Heads => cx.error_at(
                            span_of(i),
                            format!("gemv kernels take `Rows<T>` (weights [n, k], inputs [m, k], outputs [m, n]) and `&[T]` vectors; `{}` is Heads<T>", p.name),
                        ),
                        Layout::Flat if mutable => cx.error_at(
                            span_of(i),
                            format!("`{}` is a vector; a gemv output must be `&mut Rows<T>` ([m, n]: one row per input row)", p.name),
                        ),
                        _ => {}
                    }
                }
            }
        }
        Kind::Rope(_) => {
            let heads = params.iter().filter(|p| matches!(p.ty, ParamTy::Tensor { layout: Layout::Heads, mutable: true, .. })).count();
            let expected = "a rope kernel takes exactly `(q: &mut Heads<T>, k: &mut Heads<T>, pos: &[i32], inv_freq: &[f32], mscale: f32)`";
            let shape_ok = params.len() == 5
                && heads == 2
                && matches!(params[0].ty, ParamTy::Tensor { layout: Layout::Heads, mutable: true, .. })
                && matches!(params[1].ty, ParamTy::Tensor { layout: Layout::Heads, mutable: true, .. })
                && params[0].ty == params[1].ty
                && params[2].ty == ParamTy::Tensor { dtype: DTypeRef::Concrete(DType::I32), layout: Layout::Flat, mutable: false }
                && params[3].ty == ParamTy::Tensor { dtype: DTypeRef::Concrete(DType::F32), layout: Layout::Flat, mutable: false }
                && params[4].ty == ParamTy::Scalar(ScalarTy::F32);
            if !shape_ok {
                cx.error(&sig.inputs, expected);
            }
        }
    }
}

fn parse_param_ty(cx: &mut Cx, ty: &syn::Type) -> Option<ParamTy> {
    let unsupported = |cx: &mut Cx, node: &dyn ToTokens| {
        let written = node.to_token_stream().to_string().replace(" < ", "<").replace(" >", ">").replace("& ", "&");
        cx.error(node, format!("unsupported parameter type `{written}`; allowed: {ALLOWED_PARAM_TYPES}"));
        None
    };
    match ty {
        syn::Type::Path(p) if p.qself.is_none() => {
            let s = p.path.to_token_stream().to_string();
            match s.as_str() {
                "f32" => Some(ParamTy::Scalar(ScalarTy::F32)),
                "i32" => Some(ParamTy::Scalar(ScalarTy::I32)),
                "u32" => Some(ParamTy::Scalar(ScalarTy::U32)),
                _ => unsupported(cx, ty),
            }
        }
        syn::Type::Reference(r) => {
            if r.lifetime.is_some() {
                cx.error(&r.lifetime, "kernel parameters take no lifetimes");
            }
            let mutable = r.mutability.is_some();
            let (layout, elem) = match &*r.elem {
                syn::Type::Slice(s) => (Layout::Flat, &*s.elem),
                syn::Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
                    let seg = &p.path.segments[0];
                    let layout = match seg.ident.to_string().as_str() {
                        "Rows" => Layout::Rows,
                        "Heads" => Layout::Heads,
                        _ => return unsupported(cx, ty),
                    };
                    let syn::PathArguments::AngleBracketed(args) = &seg.arguments else {
                        return unsupported(cx, ty);
                    };
                    match args.args.first() {
                        Some(syn::GenericArgument::Type(t)) if args.args.len() == 1 => (layout, t),
                        _ => return unsupported(cx, ty),
                    }
                }
                _ => return unsupported(cx, ty),
            };
            let name = elem.to_token_stream().to_string();
            let dtype = if name == "T" {
                DTypeRef::Generic
            } else if let Some(d) = DType::from_name(&name) {
                DTypeRef::Concrete(d)
            } else {
                cx.error(elem, format!("unknown element type `{name}`; allowed: f32, f16, bf16, i32, u32, or the generic `T`"));
                return None;
            };
            Some(ParamTy::Tensor { dtype, layout, mutable })
        }
        _ => unsupported(cx, ty),
    }
}

fn parse_stmt(cx: &mut Cx, body: &mut Body<'_>, stores: &mut Vec<Store>, stmt: &syn::Stmt) {
    match stmt {
        syn::Stmt::Local(local) => {
            let ident = match &local.pat {
                syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => &pi.ident,
                syn::Pat::Type(pt) => match &*pt.pat {
                    syn::Pat::Ident(pi) => {
                        if pt.ty.to_token_stream().to_string() != "f32" {
                            cx.error(&pt.ty, "a `let` may only be annotated `: f32` (values compute in f32)");
                        }
                        &pi.ident
                    }
                    other => {
                        cx.error(other, "a `let` binds one plain name");
                        return;
                    }
                },
                other => {
                    cx.error(other, "a `let` binds one plain name");
                    return;
                }
            };
            let name = ident.to_string();
            if body.param_index.contains_key(&name) {
                cx.error(ident, format!("`{name}` already names a parameter; choose another name"));
                return;
            }
            let Some(init) = &local.init else {
                cx.error(local, format!("`let {name}` needs a value: `let {name} = expr;`"));
                return;
            };
            if let Some((_, diverge)) = &init.diverge {
                cx.error(diverge, "`let ... else` is not supported");
            }
            if let Some((e, t)) = parse_expr(cx, body, &init.expr) {
                body.lets.push(Let { name, value: e, ty: t.ty });
                body.let_rows.push(t.row);
            }
        }
        syn::Stmt::Expr(syn::Expr::Assign(assign), Some(_)) => parse_store(cx, body, stores, assign),
        syn::Stmt::Expr(e, None) => {
            cx.error(e, "a kernel body has no trailing value: write outputs with `*out = expr;`");
        }
        other => {
            cx.error(other, "unsupported statement; allowed: `let name = expr;` and `*output = expr;`");
        }
    }
}

fn parse_store(cx: &mut Cx, body: &mut Body<'_>, stores: &mut Vec<Store>, assign: &syn::ExprAssign) {
    let target = match &*assign.left {
        syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => &*u.expr,
        other => {
            cx.error(other, "assign outputs through a dereference: `*out = expr;`");
            return;
        }
    };
    let syn::Expr::Path(p) = target else {
        cx.error(target, "expected an output parameter name after `*`");
        return;
    };
    let Some(ident) = p.path.get_ident() else {
        cx.error(p, "expected an output parameter name after `*`");
        return;
    };
    let name = ident.to_string();
    let Some(&idx) = body.param_index.get(&name) else {
        cx.error(ident, format!("unknown output `{name}`: it is not a parameter"));
        return;
    };
    body.assigned.push(idx);
    let value = parse_expr(cx, body, &assign.right);
    let param = &body.params[idx];
    let ParamTy::Tensor { dtype, mutable, .. } = param.ty else {
        cx.error(ident, format!("`{name}` is a scalar and cannot be written; outputs are `&mut` tensors"));
        return;
    };
    if !mutable {
        cx.error(ident, format!("`{name}` is read-only: declare it `&mut` to write it"));
        return;
    }
    if stores.iter().any(|s| s.param == idx) {
        cx.error(ident, format!("`{name}` is written twice; each output is written once (bind the value with `let` first)"));
        return;
    }
    let Some((mut e, t)) = value else { return };
    let want = match dtype {
        DTypeRef::Concrete(d) => Ty::of_dtype(d),
        DTypeRef::Generic => Ty::F32,
    };
    if let (Some(v), Ty::I32 | Ty::U32) = (t.int_lit, want) {
        e = Expr::Int(v);
    } else if t.ty != want {
        let dname = match dtype {
            DTypeRef::Concrete(d) => d.name(),
            DTypeRef::Generic => "T",
        };
        cx.error(
            &assign.right,
            format!(
                "dtype mismatch: `{name}` holds {dname} (computed as {}) but the value is {}; convert with `as {}`",
                want.name(),
                t.ty.name(),
                want.name()
            ),
        );
        return;
    }
    if body.kind == Kind::Gemv {
        e = inline_lets(&e, &body.lets);
        note_gemv_role(cx, body, idx, GemvRole::Output, ident);
        check_gemv_expr(cx, body, &e, false, &assign.right);
    }
    stores.push(Store { param: idx, value: e });
}

fn role_words(r: GemvRole) -> &'static str {
    match r {
        GemvRole::Weight => "a weight (the first argument of `dot`, [n, k])",
        GemvRole::Input => "an input (read per column inside `dot` or a reduction: [m, k] or [k])",
        GemvRole::Output => "an output-side tensor (read or written per output element: [m, n] or [n])",
    }
}

/// Records that parameter `i` is used as `role`; a second, different role is an error
/// (the role fixes the tensor's shape).
fn note_gemv_role(cx: &mut Cx, body: &mut Body<'_>, i: usize, role: GemvRole, at: &dyn ToTokens) {
    match body.roles[i] {
        None => body.roles[i] = Some(role),
        Some(r) if r == role => {}
        Some(r) => cx.error(
            at,
            format!(
                "`{}` is used as {} and as {}; a gemv tensor has one role, which fixes its shape: pass a second tensor",
                body.params[i].name,
                role_words(r),
                role_words(role)
            ),
        ),
    }
}

/// Walks a gemv store (lets inlined): tensors outside `dot` and reductions are output
/// side, inside them input side; `dot` and reductions do not nest (the kernel computes
/// them all in one pass over the input columns).
fn check_gemv_expr(cx: &mut Cx, body: &mut Body<'_>, e: &Expr, input: bool, at: &syn::Expr) {
    match e {
        Expr::Tensor(i) => {
            let role = if input { GemvRole::Input } else { GemvRole::Output };
            note_gemv_role(cx, body, *i, role, at);
        }
        Expr::Dot(..) | Expr::Reduce(..) if input => {
            cx.error(at, "`dot` and reductions cannot nest in a gemv kernel: each is computed in the one pass over the input columns; compute the inner value outside");
        }
        Expr::Dot(w, a) => {
            body.dots += 1;
            note_gemv_role(cx, body, *w, GemvRole::Weight, at);
            check_gemv_expr(cx, body, a, true, at);
        }
        Expr::Reduce(_, a) => check_gemv_expr(cx, body, a, true, at),
        Expr::Float(_) | Expr::Int(_) | Expr::Scalar(_) | Expr::Local(_) | Expr::Var(_) => {}
        Expr::Unary(_, a) | Expr::Cast(_, a) => check_gemv_expr(cx, body, a, input, at),
        Expr::Binary(_, a, b) => {
            check_gemv_expr(cx, body, a, input, at);
            check_gemv_expr(cx, body, b, input, at);
        }
        Expr::Call(_, args) => args.iter().for_each(|a| check_gemv_expr(cx, body, a, input, at)),
        Expr::Select(c, a, b) => {
            check_gemv_expr(cx, body, c, input, at);
            check_gemv_expr(cx, body, a, input, at);
            check_gemv_expr(cx, body, b, input, at);
        }
    }
}

/// After every statement of a gemv kernel: it has a product, and each tensor is used
/// (its shape comes from its role).
fn check_gemv_uses(cx: &mut Cx, body: &Body<'_>, sig: &syn::Signature) {
    if cx.errors.is_some() {
        // A statement that failed to parse left its product and tensors unrecorded: one
        // mistake, one message.
        return;
    }
    if body.dots == 0 {
        cx.error(&sig.ident, "a gemv kernel computes `dot(w, x)`: write an output as an expression of it, e.g. `*out = dot(w, x);`");
    }
    for (i, p) in body.params.iter().enumerate() {
        if p.ty.is_tensor() && body.roles[i].is_none() {
            let span = sig.inputs.iter().nth(i).map(|a| a.span()).unwrap_or_else(|| sig.ident.span());
            cx.error_at(span, format!("`{}` is never used: a gemv kernel's tensor shapes follow from where they are read", p.name));
        }
    }
}

fn parse_expr(cx: &mut Cx, body: &Body<'_>, e: &syn::Expr) -> Option<(Expr, Typed)> {
    let f32_of = |row| Typed { ty: Ty::F32, row, int_lit: None };
    match e {
        syn::Expr::Lit(l) => match &l.lit {
            syn::Lit::Float(f) => match f.base10_parse::<f64>() {
                Ok(v) => Some((Expr::Float(v), f32_of(false))),
                Err(err) => {
                    cx.error(f, err);
                    None
                }
            },
            syn::Lit::Int(i) => match i.base10_parse::<i64>() {
                Ok(v) => Some((Expr::Float(v as f64), Typed { ty: Ty::F32, row: false, int_lit: Some(v) })),
                Err(err) => {
                    cx.error(i, err);
                    None
                }
            },
            other => {
                cx.error(other, "unsupported literal; use numbers such as `1.0` or `2`");
                None
            }
        },
        syn::Expr::Paren(p) => parse_expr(cx, body, &p.expr),
        syn::Expr::Group(g) => parse_expr(cx, body, &g.expr),
        syn::Expr::Path(p) => {
            let Some(ident) = p.path.get_ident() else {
                cx.error(p, "expected a parameter or `let` name");
                return None;
            };
            let name = ident.to_string();
            if let Some(i) = body.lets.iter().rposition(|l| l.name == name) {
                return Some((Expr::Local(i), Typed { ty: body.lets[i].ty, row: body.let_rows[i], int_lit: None }));
            }
            if body.kind == Kind::Attention {
                if let Some((v, _)) = AttnVar::ALL.iter().find(|(_, n)| *n == name) {
                    return Some((Expr::Var(*v), Typed { ty: v.ty(), row: false, int_lit: None }));
                }
            }
            match body.param_index.get(&name) {
                Some(&i) => match body.params[i].ty {
                    ParamTy::Scalar(s) => Some((Expr::Scalar(i), Typed { ty: s.ty(), row: false, int_lit: None })),
                    ParamTy::Tensor { dtype, .. } => {
                        let ty = match dtype {
                            DTypeRef::Concrete(d) => Ty::of_dtype(d),
                            DTypeRef::Generic => Ty::F32,
                        };
                        Some((Expr::Tensor(i), Typed { ty, row: true, int_lit: None }))
                    }
                },
                None => {
                    cx.error(ident, format!("unknown name `{name}`: not a parameter or an earlier `let`"));
                    None
                }
            }
        }
        syn::Expr::Unary(u) => match u.op {
            syn::UnOp::Deref(_) => {
                let inner = parse_expr(cx, body, &u.expr)?;
                if !matches!(inner.0, Expr::Tensor(_)) {
                    cx.error(u, "only a tensor parameter can be dereferenced");
                }
                Some(inner)
            }
            syn::UnOp::Neg(_) => {
                let (a, t) = parse_expr(cx, body, &u.expr)?;
                if let Some(v) = t.int_lit {
                    return Some((Expr::Float(-(v as f64)), Typed { int_lit: Some(-v), ..t }));
                }
                if let Expr::Float(v) = a {
                    return Some((Expr::Float(-v), t));
                }
                if t.ty != Ty::F32 {
                    cx.error(u, format!("dtype mismatch: negation needs f32, found {}; convert with `as f32`", t.ty.name()));
                    return None;
                }
                Some((Expr::Unary(UnOp::Neg, Box::new(a)), t))
            }
            syn::UnOp::Not(_) => {
                let (a, t) = parse_expr(cx, body, &u.expr)?;
                if t.ty != Ty::Bool {
                    cx.error(u, format!("`!` needs a comparison result (bool), found {}", t.ty.name()));
                    return None;
                }
                Some((Expr::Unary(UnOp::Not, Box::new(a)), t))
            }
            _ => {
                cx.error(u, "unsupported unary operator; allowed: `-`, `!`");
                None
            }
        },
        syn::Expr::Binary(b) => {
            let op = match b.op {
                syn::BinOp::Add(_) => BinOp::Add,
                syn::BinOp::Sub(_) => BinOp::Sub,
                syn::BinOp::Mul(_) => BinOp::Mul,
                syn::BinOp::Div(_) => BinOp::Div,
                syn::BinOp::Lt(_) => BinOp::Lt,
                syn::BinOp::Le(_) => BinOp::Le,
                syn::BinOp::Gt(_) => BinOp::Gt,
                syn::BinOp::Ge(_) => BinOp::Ge,
                syn::BinOp::Eq(_) => BinOp::Eq,
                syn::BinOp::Ne(_) => BinOp::Ne,
                syn::BinOp::And(_) => BinOp::And,
                syn::BinOp::Or(_) => BinOp::Or,
                _ => {
                    cx.error(b.op, "unsupported operator; allowed: + - * / < <= > >= == != && ||");
                    return None;
                }
            };
            let l = parse_expr(cx, body, &b.left);
            let r = parse_expr(cx, body, &b.right);
            let ((mut le, lt), (mut re, rt)) = (l?, r?);
            let row = lt.row || rt.row;
            if op.is_logical() {
                if lt.ty != Ty::Bool || rt.ty != Ty::Bool {
                    cx.error(
                        b,
                        format!("`{}` needs two comparison results (bool), found {} and {}", op.symbol(), lt.ty.name(), rt.ty.name()),
                    );
                    return None;
                }
                return Some((Expr::Binary(op, Box::new(le), Box::new(re)), Typed { ty: Ty::Bool, row, int_lit: None }));
            }
            let mut ty = lt.ty;
            if lt.ty != rt.ty {
                if let (Some(v), Ty::I32 | Ty::U32) = (lt.int_lit, rt.ty) {
                    le = Expr::Int(v);
                    ty = rt.ty;
                } else if let (Some(v), Ty::I32 | Ty::U32) = (rt.int_lit, lt.ty) {
                    re = Expr::Int(v);
                } else {
                    cx.error(
                        b,
                        format!(
                            "dtype mismatch: `{}` between {} and {}; convert one side with `as`",
                            op.symbol(),
                            lt.ty.name(),
                            rt.ty.name()
                        ),
                    );
                    return None;
                }
            }
            if ty == Ty::Bool {
                cx.error(b, format!("`{}` does not apply to comparison results", op.symbol()));
                return None;
            }
            if op.is_comparison() {
                return Some((Expr::Binary(op, Box::new(le), Box::new(re)), Typed { ty: Ty::Bool, row, int_lit: None }));
            }
            // Positions are integers: attention modifiers do i32 arithmetic on them.
            let int_ok = body.kind == Kind::Attention && ty == Ty::I32;
            if ty != Ty::F32 && !int_ok {
                cx.error(
                    b,
                    format!("dtype mismatch: arithmetic on {} is not supported, the DSL computes in f32; convert with `as f32`", ty.name()),
                );
                return None;
            }
            if int_ok {
                return Some((Expr::Binary(op, Box::new(le), Box::new(re)), Typed { ty: Ty::I32, row, int_lit: None }));
            }
            Some((Expr::Binary(op, Box::new(le), Box::new(re)), f32_of(row)))
        }
        syn::Expr::Cast(c) => {
            let (a, t) = parse_expr(cx, body, &c.expr)?;
            let target = match c.ty.to_token_stream().to_string().as_str() {
                "f32" => CastTo::F32,
                "f16" => CastTo::F16,
                "bf16" => CastTo::BF16,
                "i32" => CastTo::I32,
                "u32" => CastTo::U32,
                other => {
                    cx.error(&c.ty, format!("cannot cast to `{other}`; allowed: f32, f16, bf16, i32, u32"));
                    return None;
                }
            };
            if t.ty == Ty::Bool {
                cx.error(c, "cannot cast a comparison result; use `select(cond, a, b)`");
                return None;
            }
            let a = match (t.int_lit, target.ty()) {
                (Some(v), Ty::I32 | Ty::U32) => Expr::Int(v),
                _ => a,
            };
            Some((Expr::Cast(target, Box::new(a)), Typed { ty: target.ty(), row: t.row, int_lit: None }))
        }
        syn::Expr::Call(call) => parse_call(cx, body, call),
        syn::Expr::MethodCall(m) => {
            cx.error(&m.method, format!("method calls are not supported; write `{}(x)`", m.method));
            None
        }
        other => {
            cx.error(
                other,
                "unsupported expression; allowed: numbers, names, arithmetic, comparisons, `select`, `as` casts and the intrinsics",
            );
            None
        }
    }
}

fn intrinsic_list() -> String {
    let mut names: Vec<&str> = Intrinsic::ALL.iter().map(|(_, n, _)| *n).collect();
    names.extend(["select", "sum", "mean", "max (one argument)", "min (one argument)", "dot (gemv)"]);
    names.join(", ")
}

fn parse_call(cx: &mut Cx, body: &Body<'_>, call: &syn::ExprCall) -> Option<(Expr, Typed)> {
    let syn::Expr::Path(p) = &*call.func else {
        cx.error(&call.func, "expected an intrinsic name");
        return None;
    };
    let Some(ident) = p.path.get_ident() else {
        cx.error(p, format!("unknown intrinsic `{}`; allowed: {}", p.to_token_stream(), intrinsic_list()));
        return None;
    };
    let name = ident.to_string();
    let nargs = call.args.len();
    let reduce = match (name.as_str(), nargs) {
        ("sum", 1) => Some(ReduceOp::Sum),
        ("mean", 1) => Some(ReduceOp::Mean),
        ("max", 1) => Some(ReduceOp::Max),
        ("min", 1) => Some(ReduceOp::Min),
        _ => None,
    };
    if name == "dot" {
        return parse_dot(cx, body, call);
    }
    let args: Vec<Option<(Expr, Typed)>> = call.args.iter().map(|a| parse_expr(cx, body, a)).collect();
    if let Some(op) = reduce {
        if !matches!(body.kind, Kind::Rowwise | Kind::Gemv) {
            cx.error(
                ident,
                format!(
                    "reduction `{name}` is only allowed in `rowwise` and `gemv` kernels; `{}` kernels compute each element on its own",
                    body.kind.name()
                ),
            );
            return None;
        }
        let (a, t) = args.into_iter().next().flatten()?;
        if !t.row {
            cx.error(
                &call.args[0],
                format!("`{name}` reduces a row, but its argument is a scalar (the same for the whole row); pass a tensor expression"),
            );
            return None;
        }
        if t.ty != Ty::F32 {
            cx.error(&call.args[0], format!("dtype mismatch: `{name}` needs f32, found {}; convert with `as f32`", t.ty.name()));
            return None;
        }
        return Some((Expr::Reduce(op, Box::new(a)), f32_of_uniform()));
    }
    if name == "select" {
        if nargs != 3 {
            cx.error(call, "`select(cond, a, b)` takes three arguments");
            return None;
        }
        let mut it = args.into_iter();
        let (c, ct) = it.next().flatten()?;
        let (mut a, at) = it.next().flatten()?;
        let (mut b, bt) = it.next().flatten()?;
        if ct.ty != Ty::Bool {
            cx.error(&call.args[0], format!("`select` needs a comparison as its first argument, found {}", ct.ty.name()));
            return None;
        }
        let mut ty = at.ty;
        if at.ty != bt.ty {
            if let (Some(v), Ty::I32 | Ty::U32) = (at.int_lit, bt.ty) {
                a = Expr::Int(v);
                ty = bt.ty;
            } else if let (Some(v), Ty::I32 | Ty::U32) = (bt.int_lit, at.ty) {
                b = Expr::Int(v);
            } else {
                cx.error(
                    call,
                    format!("dtype mismatch: `select` branches are {} and {}; convert one with `as`", at.ty.name(), bt.ty.name()),
                );
                return None;
            }
        }
        let row = ct.row || at.row || bt.row;
        return Some((Expr::Select(Box::new(c), Box::new(a), Box::new(b)), Typed { ty, row, int_lit: None }));
    }
    let Some(&(intr, _, arity)) = Intrinsic::ALL.iter().find(|(_, n, _)| *n == name) else {
        cx.error(ident, format!("unknown intrinsic `{name}`; allowed: {}", intrinsic_list()));
        return None;
    };
    if arity != nargs {
        cx.error(call, format!("`{name}` takes {arity} argument{}, found {nargs}", if arity == 1 { "" } else { "s" }));
        return None;
    }
    let mut out = Vec::new();
    let mut row = false;
    for (i, a) in args.into_iter().enumerate() {
        let (e, t) = a?;
        if t.ty != Ty::F32 {
            cx.error(&call.args[i], format!("dtype mismatch: `{name}` needs f32, found {}; convert with `as f32`", t.ty.name()));
            return None;
        }
        row |= t.row;
        out.push(e);
    }
    Some((Expr::Call(intr, out), Typed { ty: Ty::F32, row, int_lit: None }))
}

/// `dot(w, e)`: `w` names a `&Rows<T>` weight parameter, `e` is f32.
fn parse_dot(cx: &mut Cx, body: &Body<'_>, call: &syn::ExprCall) -> Option<(Expr, Typed)> {
    if body.kind != Kind::Gemv {
        cx.error(&call.func, format!("`dot` is only allowed in `gemv` kernels; `{}` kernels have no weight matrix", body.kind.name()));
        return None;
    }
    if call.args.len() != 2 {
        cx.error(call, "`dot(w, x)` takes two arguments: the weight parameter and an expression over the input columns");
        return None;
    }
    let weight = match &call.args[0] {
        syn::Expr::Path(p) => p.path.get_ident().and_then(|i| body.param_index.get(&i.to_string()).copied()),
        _ => None,
    };
    let ok = weight.is_some_and(|w| matches!(body.params[w].ty, ParamTy::Tensor { layout: Layout::Rows, mutable: false, .. }));
    let (a, t) = parse_expr(cx, body, &call.args[1])?;
    let (Some(w), true) = (weight, ok) else {
        cx.error(
            &call.args[0],
            "the first argument of `dot` names a weight parameter declared `&Rows<T>` ([n, k], one row per output column)",
        );
        return None;
    };
    if t.ty != Ty::F32 {
        cx.error(&call.args[1], format!("dtype mismatch: `dot` needs f32, found {}; convert with `as f32`", t.ty.name()));
        return None;
    }
    Some((Expr::Dot(w, Box::new(a)), f32_of_uniform()))
}

fn f32_of_uniform() -> Typed {
    Typed { ty: Ty::F32, row: false, int_lit: None }
}

/// Finds every `#[gpu_kernel]` function in a Rust source file (inline modules included)
/// and returns each with its attribute arguments. Used by the build helper.
pub fn find_kernels(file: &syn::File) -> Vec<(TokenStream, syn::ItemFn)> {
    fn walk(items: &[syn::Item], out: &mut Vec<(TokenStream, syn::ItemFn)>) {
        for item in items {
            match item {
                syn::Item::Fn(f) => {
                    for attr in &f.attrs {
                        let last = attr.path().segments.last().map(|s| s.ident.to_string());
                        if last.as_deref() == Some("gpu_kernel") {
                            let args = match &attr.meta {
                                Meta::List(l) => l.tokens.clone(),
                                _ => TokenStream::new(),
                            };
                            let mut f = f.clone();
                            f.attrs.clear();
                            out.push((args, f));
                        }
                    }
                }
                syn::Item::Mod(m) => {
                    if let Some((_, items)) = &m.content {
                        walk(items, out);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(&file.items, &mut out);
    out
}
