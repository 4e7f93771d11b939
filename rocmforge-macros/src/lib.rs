//! `#[gpu_kernel(KIND(options))]`: a kernel declaration to a typed launcher module.
//!
//! Parsing and validation live in `rocmforge-dsl` (shared with the build helper); this
//! crate only expands. See `expand.rs`.

mod expand;

use proc_macro::TokenStream;

/// Declares a fused GPU kernel. See the `rocmforge-dsl` docs for the language.
#[proc_macro_attribute]
pub fn gpu_kernel(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(args.into(), item.into()).into()
}
