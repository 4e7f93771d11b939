//! Snapshots of the generated HIP: one per standard kernel and specialization.
//! Review changes with `cargo insta review`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

use rocmforge::dsl::codegen::{render_spec, PORTABILITY_HEADER};
use rocmforge::dsl::spec::{symbol_name, WARP_SIZES};
use rocmforge::models::kernels;

#[test]
fn standard_kernels_hip() {
    let mut seen = std::collections::BTreeSet::new();
    for k in kernels::all().expect("standard kernels parse") {
        for warp in WARP_SIZES {
            for spec in k.specs(warp) {
                let symbol = symbol_name(&k.name, &spec);
                if !seen.insert(symbol.clone()) {
                    continue; // warp-independent kinds give one symbol for both warp sizes
                }
                let code = render_spec(k, &spec).expect("render");
                assert!(code.contains(&symbol), "{symbol} not defined by its own render");
                insta::assert_snapshot!(symbol, code);
            }
        }
    }
    // 2 elementwise x 3 dtypes, 5 rowwise x 3 dtypes x (4 blocks + warp-per-row) x 2 warps,
    // rope: neox 3 dtypes x 7 head dims + gptj 3 x 5, attention: plain 3 x 5, causal 3 x 7,
    // window 3 x 4, softcap and alibi 2 x 2 each; gemv: 7 x 3 dtypes x 2 warps.
    assert_eq!(seen.len(), 6 + 150 + (21 + 15) + (15 + 21 + 12 + 4 + 4) + 42);
}

#[test]
fn engine_kernels() {
    let src = rocmforge::dsl::codegen::engine_source().expect("engine kernels render");
    for d in rocmforge::dsl::codegen::ENGINE_DTYPES {
        for k in ["gather", "argmax"] {
            assert!(src.contains(&format!("rf_{k}_{}(", d.name())), "rf_{k}_{} missing", d.name());
        }
    }
    // The sampler's kernels take the f32 logits only.
    for k in ["topk_stage", "penalize", "softmax_mass"] {
        assert!(src.contains(&format!("rf_{k}_f32(")), "rf_{k}_f32 missing");
    }
    insta::assert_snapshot!("engine_kernels", src);
}

/// The `extern "C"` kernel symbols (`rf_...`) a source defines, in order.
fn kernel_symbols(src: &str) -> Vec<String> {
    src.match_indices("extern \"C\" __global__")
        .filter_map(|(i, _)| src[i..].split(|c: char| c.is_whitespace() || c == '(').find(|t| t.starts_with("rf_")).map(str::to_string))
        .collect()
}

#[test]
fn engine_parts_partition_the_engine_kernels() {
    use rocmforge::dsl::codegen::{engine_source_for, EnginePart, ENGINE_DTYPES};
    let all = kernel_symbols(&rocmforge::dsl::codegen::engine_source().expect("engine kernels render"));
    let mut from_parts = Vec::new();
    for d in ENGINE_DTYPES {
        for part in EnginePart::ALL {
            let src = engine_source_for(d, part).expect("engine part renders");
            assert!(src.starts_with(PORTABILITY_HEADER), "{} {}: no header", d.name(), part.name());
            let syms = kernel_symbols(&src);
            assert!(!syms.is_empty(), "{} {}: no kernels", d.name(), part.name());
            assert!(syms.iter().all(|s| s.ends_with(&format!("_{}", d.name()))), "{} {}: {syms:?}", d.name(), part.name());
            from_parts.extend(syms);
        }
    }
    // Every kernel in exactly one part, none lost or added.
    let mut a = all.clone();
    a.sort();
    from_parts.sort();
    assert_eq!(from_parts, a);
    // 3 dtypes x (gather, argmax, q/k/v stage, SwiGLU rows, the greedy step's index
    // advance with its gather + 4 gemv + 4 pair kernels, each with one and two warps a
    // row), and the decode index advance, the sampling penalties, the softmax normalizer
    // and the staged top-k (f32's misc only: they move no activations; the logits are f32).
    assert_eq!(all.len(), 3 * 21 + 4);
    assert!(engine_source_for(rocmforge::dsl::DType::I32, EnginePart::Misc).is_err());
    assert!(engine_source_for(rocmforge::dsl::DType::BF16, EnginePart::Gemv(3)).is_err());
}

#[test]
fn decode_step_kernel() {
    // The Llama-3.2-1B shape class: bf16, head_dim 64 (two dims a lane), 4 query heads a KV head.
    let src = rocmforge::dsl::codegen::decode_step_source(rocmforge::dsl::DType::BF16, 2, 4).expect("decode step renders");
    assert!(src.contains("rf_decode_step_bf16("));
    insta::assert_snapshot!("decode_step_bf16_d2_g4", src);
}

#[test]
fn portability_header() {
    insta::assert_snapshot!("portability_header", PORTABILITY_HEADER);
}
