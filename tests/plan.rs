//! Launch planning: shapes, dtypes, specializations and grid math are checked before
//! anything is launched, with typed errors; no input overflows or exceeds a limit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

use proptest::prelude::*;
use rocmforge::dsl::args::{ArgError, Dims};
use rocmforge::dsl::DType;
use rocmforge::models::kernels;
use rocmforge::runtime::{ArgValue, DeviceLimits, LaunchError, TensorDesc};

const NV: DeviceLimits = DeviceLimits::NVIDIA_SM90;

fn t(d: DType, shape: &[usize]) -> TensorDesc {
    TensorDesc::new(d, shape, 0x1000)
}

#[test]
fn swiglu_plan_is_vectorized_and_ordered() {
    let (g, u) = (t(DType::BF16, &[4096, 14336]), t(DType::BF16, &[4096, 14336]));
    let mut out = t(DType::BF16, &[4096, 14336]);
    let p = kernels::swiglu::plan(&NV, &g, &u, &mut out).unwrap();
    assert_eq!(p.symbol, "rf_swiglu_bf16_b256");
    assert_eq!(p.block, [256, 1, 1]);
    let n = 4096u64 * 14336;
    assert_eq!(p.grid[0] as u64, n.div_ceil(8).div_ceil(256));
    assert_eq!(p.args, vec![ArgValue::Ptr(0x1000), ArgValue::Ptr(0x1000), ArgValue::Ptr(0x1000), ArgValue::I64(n as i64)]);
}

#[test]
fn element_count_past_u32_does_not_wrap() {
    // seq_len * intermediate_size = 300000 * 14336 > u32::MAX.
    let shape = [300_000usize, 14336];
    let (g, u) = (t(DType::F16, &shape), t(DType::F16, &shape));
    let mut out = t(DType::F16, &shape);
    let p = kernels::swiglu::plan(&NV, &g, &u, &mut out).unwrap();
    let n = 300_000u64 * 14336;
    assert!(n > u64::from(u32::MAX));
    assert_eq!(p.args[3], ArgValue::I64(n as i64));
    assert_eq!(p.dims, Dims::Elementwise { n });
}

#[test]
fn grid_clamps_to_device_limit() {
    let limits = DeviceLimits { max_grid: [1000, 1, 1], ..NV };
    let (g, u) = (t(DType::F32, &[1 << 24]), t(DType::F32, &[1 << 24]));
    let mut out = t(DType::F32, &[1 << 24]);
    let p = kernels::swiglu::plan(&limits, &g, &u, &mut out).unwrap();
    assert_eq!(p.grid[0], 1000);
}

#[test]
fn wrong_shape_is_typed_error() {
    let (g, u) = (t(DType::F32, &[10]), t(DType::F32, &[11]));
    let mut out = t(DType::F32, &[10]);
    let e = kernels::swiglu::plan(&NV, &g, &u, &mut out).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Shape { ref param, .. }) if param == "up"), "{e}");
}

#[test]
fn wrong_dtype_is_typed_error() {
    let (g, u) = (t(DType::F32, &[10]), t(DType::F16, &[10]));
    let mut out = t(DType::F32, &[10]);
    let e = kernels::swiglu::plan(&NV, &g, &u, &mut out).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::DType { ref param, got: DType::F16, .. }) if param == "up"), "{e}");
    let e = kernels::rope_neox::plan(
        &NV,
        &mut t(DType::F16, &[4, 2, 64]),
        &mut t(DType::F16, &[4, 2, 64]),
        &t(DType::F32, &[4]),
        &t(DType::F32, &[32]),
        1.0,
    )
    .unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::DType { ref param, .. }) if param == "pos"), "{e}");
}

#[test]
fn zero_size_is_typed_error() {
    let (g, u) = (t(DType::F32, &[0, 5]), t(DType::F32, &[0, 5]));
    let mut out = t(DType::F32, &[0, 5]);
    let e = kernels::swiglu::plan(&NV, &g, &u, &mut out).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Empty { .. })), "{e}");
}

#[test]
fn unsupported_head_dim_names_supported_set() {
    let e = kernels::rope_neox::plan(
        &NV,
        &mut t(DType::BF16, &[4, 2, 48]),
        &mut t(DType::BF16, &[4, 2, 48]),
        &t(DType::I32, &[4]),
        &t(DType::F32, &[24]),
        1.0,
    )
    .unwrap_err();
    match e {
        LaunchError::UnsupportedSpecialization { what: "head_dim", value: 48, ref supported, .. } => {
            assert_eq!(supported, &vec![16, 32, 64, 80, 96, 128, 256]);
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn unsupported_warp_size_is_typed_error() {
    let limits = DeviceLimits { warp_size: 16, ..NV };
    let x = t(DType::F32, &[4, 4]);
    let mut out = t(DType::F32, &[4, 4]);
    let e = kernels::softmax::plan(&limits, &x, &mut out, 1.0).unwrap_err();
    assert!(matches!(e, LaunchError::UnsupportedSpecialization { what: "warp size", .. }), "{e}");
}

#[test]
fn block_over_device_limit_is_typed_error() {
    let limits = DeviceLimits { max_threads_per_block: 128, ..NV };
    let x = t(DType::F32, &[4, 1 << 20]);
    let mut out = t(DType::F32, &[4, 1 << 20]);
    let e = kernels::softmax::plan(&limits, &x, &mut out, 1.0).unwrap_err();
    assert!(matches!(e, LaunchError::Limit { what: "threads per block", .. }), "{e}");
}

#[test]
fn rowwise_picks_warp_per_row_for_short_rows_and_blocks_for_long() {
    let w = t(DType::F16, &[256]);
    let x = t(DType::F16, &[64, 256]);
    let mut out = t(DType::F16, &[64, 256]);
    let p = kernels::rmsnorm::plan(&NV, &x, &w, &mut out, 1e-6).unwrap();
    assert_eq!(p.symbol, "rf_rmsnorm_f16_rw_w32");
    assert_eq!(p.grid[0], 16); // four rows per workgroup
    let w = t(DType::F16, &[4096]);
    let x = t(DType::F16, &[4096, 4096]);
    let mut out = t(DType::F16, &[4096, 4096]);
    let p = kernels::rmsnorm::plan(&DeviceLimits::AMD_CDNA, &x, &w, &mut out, 1e-6).unwrap();
    assert!(p.symbol.starts_with("rf_rmsnorm_f16_b") && p.symbol.ends_with("_w64"), "{}", p.symbol);
    assert_eq!(p.grid[0], 4096);
}

#[test]
fn rope_plan_passes_q_and_k_heads() {
    let p = kernels::rope_neox::plan(
        &NV,
        &mut t(DType::BF16, &[4096, 32, 128]),
        &mut t(DType::BF16, &[4096, 8, 128]),
        &t(DType::I32, &[4096]),
        &t(DType::F32, &[64]),
        1.0,
    )
    .unwrap();
    assert_eq!(p.symbol, "rf_rope_neox_bf16_hd128_b256");
    // 64 pairs in groups of 8 and 32 + 8 heads in groups of 4: 8 x 10 threads per token.
    assert_eq!(p.grid[0] as u64, (4096u64 * 8 * 10).div_ceil(256));
    assert_eq!(&p.args[5..], &[ArgValue::I64(4096), ArgValue::I32(32), ArgValue::I32(8), ArgValue::I32(64)]);
}

#[test]
fn gemv_plan_groups_rows_and_warps() {
    // LM head of a 1B model at one sequence: one warp per output column, four per workgroup.
    let x = t(DType::BF16, &[1, 2048]);
    let g = t(DType::BF16, &[2048]);
    let w = t(DType::BF16, &[128_256, 2048]);
    let mut logits = t(DType::F32, &[1, 128_256]);
    let p = kernels::lm_head::plan(&NV, &x, &g, &w, &mut logits, 1e-5).unwrap();
    assert_eq!(p.symbol, "rf_lm_head_bf16_b128_w32_m1");
    assert_eq!(p.grid, [128_256 / 4, 1, 1]);
    assert_eq!(&p.args[5..], &[ArgValue::I64(1), ArgValue::I64(128_256), ArgValue::I64(2048)]);
    assert_eq!(p.dims, Dims::Gemv { m: 1, n: 128_256, k: 2048 });
    // 3 rows take the 4-row kernel; 20 rows run as 3 groups of 8 along y. Wave64: two
    // wavefronts per workgroup.
    let x = t(DType::F16, &[3, 512]);
    let w = t(DType::F16, &[1000, 512]);
    let mut res = t(DType::F16, &[3, 1000]);
    let p = kernels::linear_residual::plan(&NV, &x, &w, &mut res).unwrap();
    assert_eq!((p.symbol.as_str(), p.grid), ("rf_linear_residual_f16_b128_w32_m4", [250, 1, 1]));
    let x = t(DType::F16, &[4, 5, 512]);
    let mut res = t(DType::F16, &[4, 5, 1000]);
    let p = kernels::linear_residual::plan(&DeviceLimits::AMD_CDNA, &x, &w, &mut res).unwrap();
    assert_eq!((p.symbol.as_str(), p.grid), ("rf_linear_residual_f16_b128_w64_m8", [500, 3, 1]));
}

/// A gemv kernel with a non-default workgroup size: 256 threads.
#[rocmforge::gpu_kernel(gemv(dtype = [bf16], block = 256))]
pub fn linear_b256(x: &Rows<T>, w: &Rows<T>, out: &mut Rows<T>) {
    *out = dot(w, x);
}

/// The smallest workgroup: one 64-wide wavefront (two 32-wide warps).
#[rocmforge::gpu_kernel(gemv(dtype = [bf16], block = 64))]
pub fn linear_b64(x: &Rows<T>, w: &Rows<T>, out: &mut Rows<T>) {
    *out = dot(w, x);
}

#[test]
fn gemv_block_option_sets_warps_per_workgroup() {
    // One warp per output column: n / (block / warp) workgroups, rounded up.
    let x = t(DType::BF16, &[1, 512]);
    let w = t(DType::BF16, &[1000, 512]);
    let mut out = t(DType::BF16, &[1, 1000]);
    let p = linear_b256::plan(&NV, &x, &w, &mut out).unwrap();
    assert_eq!((p.symbol.as_str(), p.grid, p.block), ("rf_linear_b256_bf16_b256_w32_m1", [125, 1, 1], [256, 1, 1]));
    let p = linear_b256::plan(&DeviceLimits::AMD_CDNA, &x, &w, &mut out).unwrap();
    assert_eq!((p.symbol.as_str(), p.grid, p.block), ("rf_linear_b256_bf16_b256_w64_m1", [250, 1, 1], [256, 1, 1]));
    let p = linear_b64::plan(&NV, &x, &w, &mut out).unwrap();
    assert_eq!((p.symbol.as_str(), p.grid, p.block), ("rf_linear_b64_bf16_b64_w32_m1", [500, 1, 1], [64, 1, 1]));
    let p = linear_b64::plan(&DeviceLimits::AMD_CDNA, &x, &w, &mut out).unwrap();
    assert_eq!((p.symbol.as_str(), p.grid, p.block), ("rf_linear_b64_bf16_b64_w64_m1", [1000, 1, 1], [64, 1, 1]));
    // The generated source declares the workgroup size it is launched with.
    let k = linear_b256::kernel().unwrap();
    for warp in [32, 64] {
        let specs = k.specs(warp);
        assert_eq!(specs.len(), 1);
        let src = rocmforge::dsl::codegen::render_spec(k, &specs[0]).unwrap();
        assert!(src.contains("__launch_bounds__(256)"), "{src}");
        assert!(src.contains(&format!("constexpr int WARP = {warp};")) && src.contains("constexpr int WPB = 256 / WARP;"), "{src}");
    }
}

#[test]
fn gemv_shape_errors_name_the_tensor() {
    let w = t(DType::BF16, &[64, 256]);
    let (wg, wu) = (t(DType::BF16, &[64, 256]), t(DType::BF16, &[64, 128]));
    let x = t(DType::BF16, &[2, 256]);
    let mut out = t(DType::BF16, &[2, 64]);
    let e = kernels::gate_up_swiglu::plan(&NV, &x, &wg, &wu, &mut out).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Shape { ref param, .. }) if param == "w_up"), "{e}");
    // x with the output's columns, the output with the input's, a 3-d weight.
    let e = kernels::linear::plan(&NV, &t(DType::BF16, &[2, 64]), &w, &mut out).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Shape { ref param, .. }) if param == "x"), "{e}");
    let e = kernels::linear::plan(&NV, &x, &w, &mut t(DType::BF16, &[3, 64])).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Shape { ref param, .. }) if param == "out"), "{e}");
    let e = kernels::linear::plan(&NV, &x, &t(DType::BF16, &[1, 64, 256]), &mut out).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Rank { ref param, .. }) if param == "w"), "{e}");
    // The norm's weight runs over the input columns.
    let e = kernels::rmsnorm_linear::plan(&NV, &x, &t(DType::BF16, &[64]), &w, &mut out, 1e-5).unwrap_err();
    assert!(matches!(e, LaunchError::Args(ArgError::Shape { ref param, .. }) if param == "g"), "{e}");
    // Row groups past the grid's y limit are a typed error, not a wrap.
    let limits = DeviceLimits { max_grid: [1 << 20, 2, 1], ..NV };
    let x = t(DType::BF16, &[17, 256]);
    let e = kernels::linear::plan(&limits, &x, &w, &mut t(DType::BF16, &[17, 64])).unwrap_err();
    assert!(matches!(e, LaunchError::Limit { .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any shape and any device limits: either a plan within every limit that carries
    /// the exact 64-bit sizes, or a typed error. Never a panic, never a silent wrap.
    #[test]
    fn grid_math_never_overflows(
        dims in proptest::collection::vec(prop_oneof![0usize..5, 1usize..100_000, Just(usize::MAX / 3), Just(1usize << 31)], 1..4),
        grid_x in 1u32..=u32::MAX, threads in prop_oneof![Just(64u32), Just(256), Just(1024)], warp in prop_oneof![Just(32u32), Just(64)],
        kind in 0usize..3,
    ) {
        let limits = DeviceLimits { warp_size: warp, max_threads_per_block: threads, max_grid: [grid_x, 65535, 65535], max_shared_bytes: 49152, compute_units: 100, mma: false, mfma: false, wmma: false, clusters: false, wgmma: false };
        let exact = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let res = match kind {
            0 => {
                let (a, b) = (t(DType::F16, &dims), t(DType::F16, &dims));
                let mut o = t(DType::F16, &dims);
                kernels::swiglu::plan(&limits, &a, &b, &mut o)
            }
            1 => {
                let cols = *dims.last().unwrap();
                let (x, w) = (t(DType::F32, &dims), t(DType::F32, &[cols]));
                let mut o = t(DType::F32, &dims);
                kernels::rmsnorm::plan(&limits, &x, &w, &mut o, 1e-5)
            }
            _ => {
                let shape = [dims[0], *dims.get(1).unwrap_or(&1), 128];
                let shape_k = [dims[0], 1, 128];
                kernels::rope_neox::plan(&limits, &mut t(DType::BF16, &shape), &mut t(DType::BF16, &shape_k),
                    &t(DType::I32, &[dims[0]]), &t(DType::F32, &[64]), 1.0)
            }
        };
        match res {
            Ok(p) => {
                prop_assert!(p.grid[0] >= 1 && p.grid[0] <= grid_x);
                prop_assert!(p.block[0] <= threads && p.block[0] % warp == 0);
                if kind == 0 {
                    prop_assert_eq!(p.args[3], ArgValue::I64(exact.unwrap() as i64));
                }
            }
            Err(e) => {
                let n = exact.unwrap_or(u64::MAX);
                let legit = n == 0 || n > i64::MAX as u64 || matches!(e, LaunchError::Limit { .. } | LaunchError::Args(_));
                prop_assert!(legit, "unexpected error {e}");
            }
        }
    }
}
