//! Expansion: the function item becomes a module of the same name holding the
//! declaration's text (the runtime re-parses it into the same IR), a `plan` launcher
//! with one typed argument per parameter, and `run_host` (the interpreter).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use rocmforge_dsl::ir::{Kernel, ParamTy, ScalarTy};

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    match rocmforge_dsl::parse::parse_kernel(args.clone(), &func) {
        Ok(kernel) => {
            let out = launcher(&kernel, &args, &func);
            if kernel.options.debug {
                debug_print(&kernel, &out);
            }
            out
        }
        Err(e) => {
            // One mistake, one message: an empty module keeps later uses from piling up
            // "cannot find" errors.
            let vis = &func.vis;
            let name = &func.sig.ident;
            let err = e.to_compile_error();
            quote! {
                #err
                #[allow(dead_code)]
                #vis mod #name {}
            }
        }
    }
}

#[allow(clippy::print_stderr, reason = "the `debug` option prints the expansion at compile time")]
fn debug_print(kernel: &Kernel, out: &TokenStream) {
    eprintln!("=== #[gpu_kernel] {}: expansion ===\n{out}", kernel.name);
    for warp in rocmforge_dsl::spec::WARP_SIZES {
        match rocmforge_dsl::codegen::render_source(kernel, &kernel.specs(warp)) {
            Ok(src) => eprintln!("=== #[gpu_kernel] {}: HIP, warp {warp} ===\n{src}", kernel.name),
            Err(e) => eprintln!("=== #[gpu_kernel] {}: codegen failed: {e}", kernel.name),
        }
    }
}

/// The path of the runtime crate as the calling crate names it: `rocmforge-runtime`
/// directly, or through the `rocmforge` facade.
fn runtime_path() -> TokenStream {
    use proc_macro_crate::{crate_name, FoundCrate};
    match crate_name("rocmforge-runtime") {
        Ok(FoundCrate::Itself) => quote!(crate),
        Ok(FoundCrate::Name(n)) => {
            let id = format_ident!("{n}");
            quote!(::#id)
        }
        Err(_) => match crate_name("rocmforge") {
            Ok(FoundCrate::Itself) => quote!(crate::runtime),
            Ok(FoundCrate::Name(n)) => {
                let id = format_ident!("{n}");
                quote!(::#id::runtime)
            }
            Err(_) => quote!(::rocmforge_runtime),
        },
    }
}

fn launcher(kernel: &Kernel, args: &TokenStream, func: &syn::ItemFn) -> TokenStream {
    let rt = runtime_path();
    let vis = &func.vis;
    let name = &func.sig.ident;
    let docs: Vec<&syn::Attribute> = func.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();
    let mut stripped = func.clone();
    stripped.attrs.clear();
    let attr_text = args.to_string();
    let item_text = stripped.to_token_stream().to_string();

    let mut params = Vec::new();
    let mut arg_exprs = Vec::new();
    for (p, input) in kernel.params.iter().zip(&func.sig.inputs) {
        let ident = match input {
            syn::FnArg::Typed(pt) => match &*pt.pat {
                syn::Pat::Ident(pi) => pi.ident.clone(),
                _ => format_ident!("{}", p.name),
            },
            syn::FnArg::Receiver(_) => format_ident!("{}", p.name),
        };
        match p.ty {
            ParamTy::Tensor { mutable: true, .. } => {
                params.push(quote! { #ident: &mut dyn #rt::TensorArg });
                arg_exprs.push(quote! { #rt::Arg::Tensor(&*#ident) });
            }
            ParamTy::Tensor { mutable: false, .. } => {
                params.push(quote! { #ident: &dyn #rt::TensorArg });
                arg_exprs.push(quote! { #rt::Arg::Tensor(#ident) });
            }
            ParamTy::Scalar(s) => {
                let (ty, variant) = match s {
                    ScalarTy::F32 => (quote!(f32), quote!(F32)),
                    ScalarTy::I32 => (quote!(i32), quote!(I32)),
                    ScalarTy::U32 => (quote!(u32), quote!(U32)),
                };
                params.push(quote! { #ident: #ty });
                arg_exprs.push(quote! { #rt::Arg::#variant(#ident) });
            }
        }
    }
    let kind = kernel.kind.name();
    let planners = if kernel.kind == rocmforge_dsl::ir::Kind::Attention {
        quote! {
            /// Checks the arguments against the declaration and the device limits and
            /// returns the launch. `seqs` places the sequences: query offsets, contiguous
            /// or paged K/V, and the longest query and key/value runs. Up to 8 queries
            /// per sequence run the split-KV decode kernel, longer runs the prefill.
            #[allow(clippy::too_many_arguments, reason = "one argument per declared parameter")]
            pub fn plan(
                limits: &#rt::DeviceLimits,
                #(#params,)*
                seqs: &#rt::AttnSeqs<'_>,
            ) -> ::core::result::Result<#rt::LaunchPlan, #rt::LaunchError> {
                #rt::plan_attention(kernel()?, limits, &[#(#arg_exprs),*], seqs)
            }

            /// Plans writing new K/V rows `[tokens, kv_heads, head_dim]` into paged caches
            /// `[pages, page_size, kv_heads, head_dim]` at `slots` (i32, one per token:
            /// `page * page_size + offset`; negative slots are skipped).
            pub fn plan_kv_store(
                limits: &#rt::DeviceLimits,
                k_new: &dyn #rt::TensorArg,
                v_new: &dyn #rt::TensorArg,
                k_cache: &mut dyn #rt::TensorArg,
                v_cache: &mut dyn #rt::TensorArg,
                slots: &dyn #rt::TensorArg,
            ) -> ::core::result::Result<#rt::LaunchPlan, #rt::LaunchError> {
                #rt::plan_kv_store(kernel()?, limits, k_new, v_new, &*k_cache, &*v_cache, slots)
            }
        }
    } else {
        quote! {
            /// Checks the arguments against the declaration and the device limits and
            /// returns the launch: symbol, grid, block, shared bytes, ordered arguments.
            #[allow(clippy::too_many_arguments, reason = "one argument per declared parameter")]
            pub fn plan(
                limits: &#rt::DeviceLimits,
                #(#params),*
            ) -> ::core::result::Result<#rt::LaunchPlan, #rt::LaunchError> {
                #rt::plan(kernel()?, limits, &[#(#arg_exprs),*])
            }
        }
    };
    let summary = format!("Launcher of the `{kind}` kernel `{}` declared with `#[gpu_kernel]`.", kernel.name);
    quote! {
        #(#docs)*
        #[doc = ""]
        #[doc = #summary]
        #vis mod #name {
            /// The attribute arguments as declared.
            pub const ATTR: &str = #attr_text;
            /// The function item as declared.
            pub const ITEM: &str = #item_text;

            /// The kernel's IR, parsed once from the declaration.
            pub fn kernel() -> ::core::result::Result<&'static #rt::Kernel, #rt::LaunchError> {
                static KERNEL: ::std::sync::OnceLock<::core::result::Result<#rt::Kernel, ::std::string::String>> =
                    ::std::sync::OnceLock::new();
                KERNEL
                    .get_or_init(|| #rt::parse_kernel_str(ATTR, ITEM))
                    .as_ref()
                    .map_err(|e| #rt::LaunchError::Kernel(::core::clone::Clone::clone(e)))
            }

            #planners

            /// Runs the kernel on the host with the IR interpreter, in place.
            pub fn run_host(
                args: &mut [#rt::HostArg],
            ) -> ::core::result::Result<(), #rt::LaunchError> {
                #rt::dsl::interp::run(kernel()?, args).map_err(#rt::LaunchError::from)
            }
        }
    }
}
