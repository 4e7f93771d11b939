//! The user's kernel: a typed launcher, interpreter semantics, and AOT code objects.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

use ::quick_gelu::aot;
use ::quick_gelu::quick_gelu as kernel;
use rocmforge::dsl::DType;
use rocmforge::runtime::{DeviceLimits, HostArg, HostTensor, TensorDesc};

#[test]
fn launcher_plans_and_interpreter_computes() {
    let x = TensorDesc::new(DType::BF16, &[3, 1000], 0x100);
    let mut y = TensorDesc::new(DType::BF16, &[3, 1000], 0x200);
    let plan = kernel::plan(&DeviceLimits::AMD_CDNA, &x, &mut y).unwrap();
    assert_eq!(plan.symbol, "rf_quick_gelu_bf16_b256");

    let xs: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
    let mut args = vec![
        HostArg::Tensor(HostTensor::from_f32(DType::F32, &[64], &xs).unwrap()),
        HostArg::Tensor(HostTensor::from_f32(DType::F32, &[64], &[f32::NAN; 64]).unwrap()),
    ];
    kernel::run_host(&mut args).unwrap();
    let ys = args[1].tensor().unwrap().to_f32_vec();
    for (x, y) in xs.iter().zip(ys) {
        let want = f64::from(*x) / (1.0 + (-1.702 * f64::from(*x)).exp());
        assert!((f64::from(y) - want).abs() <= 1e-6 * want.abs().max(1.0), "{x}: {y} vs {want}");
    }
}

#[test]
fn build_embeds_source_and_gfx90a_code_object() {
    assert_eq!(aot::ROCMFORGE_KERNEL_NAMES, &["quick_gelu"]);
    assert!(aot::ROCMFORGE_SOURCES.iter().any(|(w, s)| *w == 64 && s.contains("rf_quick_gelu_f16_b256")));
    let require = std::env::var("ROCMFORGE_REQUIRE_AOT").as_deref() == Ok("1");
    let gfx90a = aot::ROCMFORGE_CODE_OBJECTS.iter().find(|(t, _)| *t == "gfx90a");
    if require {
        let (_, bytes) = gfx90a.expect("ROCMFORGE_REQUIRE_AOT=1: gfx90a code object built");
        // hipcc --genco writes an offload bundle or an ELF; both start with a magic.
        assert!(bytes.starts_with(b"__CLANG_OFFLOAD_BUNDLE__") || bytes.starts_with(b"\x7fELF"));
        assert!(bytes.windows(b"rf_quick_gelu_f16_b256".len()).any(|w| w == b"rf_quick_gelu_f16_b256"));
    }
}
