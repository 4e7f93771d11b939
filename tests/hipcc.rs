//! Every generated kernel (and the engine kernels) compiled by hipcc with `-Wall -Werror`: gfx90a (wave64, the
//! CDNA path) and gfx1030 (wave32, the RDNA path); and by LLVM 19's clang for gfx1100 (RDNA3,
//! the WMMA prefill), which Debian's hipcc (LLVM 15) cannot build.
//!
//! Without the compiler a test fails when `ROCMFORGE_REQUIRE_AOT=1` (as in CI) and otherwise
//! reports that it compiled nothing, so a developer machine without ROCm still passes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

use std::process::Command;

use rocmforge::dsl::build::{amd_warp_size, find_tool, hipcc_args};
use rocmforge::dsl::codegen::render_source;
use rocmforge::dsl::DType;
use rocmforge::models::kernels;

#[test]
fn generated_hip_compiles_without_warnings() {
    let Some(hipcc) = find_tool("HIPCC", "hipcc", &[("ROCM_PATH", "bin/hipcc")]) else {
        assert_ne!(std::env::var("ROCMFORGE_REQUIRE_AOT").as_deref(), Ok("1"), "ROCMFORGE_REQUIRE_AOT=1 but hipcc was not found");
        eprintln!("hipcc not found: compiled nothing");
        return;
    };
    let dir = std::env::temp_dir().join(format!("rocmforge-hipcc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ks = kernels::all().unwrap();
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for target in ["gfx90a", "gfx1030"] {
            let mut units: Vec<(String, String)> =
                ks.iter().map(|k| (k.name.clone(), render_source(k, &k.specs(amd_warp_size(target))).unwrap())).collect();
            units.push(("engine".into(), rocmforge::dsl::codegen::engine_source().unwrap()));
            for (name, src) in units {
                let path = dir.join(format!("{name}_{target}.hip"));
                std::fs::write(&path, src).unwrap();
                let out = dir.join(format!("{name}_{target}.hsaco"));
                let mut args = hipcc_args(target, &path, &out);
                args.push("-Werror".into());
                let hipcc = &hipcc;
                handles.push(s.spawn(move || {
                    let o = Command::new(hipcc).args(&args).output().expect("run hipcc");
                    let log = String::from_utf8_lossy(&o.stderr).into_owned();
                    (format!("{name} {target}"), o.status.success() && out.is_file() && log.trim().is_empty(), log)
                }));
            }
        }
        for h in handles {
            let (what, ok, log) = h.join().unwrap();
            if !ok {
                failures.push(format!("{what}:\n{log}"));
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "hipcc failed:\n{}", failures.join("\n"));
}

/// gfx1100 device code of every generated kernel, to assembly, by clang 19 (`clang-19`, or
/// `ROCMFORGE_HIP_CLANG`) with `-Wall -Werror` and the HIP headers of the hipcc install;
/// each f16/bf16 attention kernel up to head_dim 128 must contain WMMA instructions (its
/// prefill took the `RF_WMMA` path, not the empty fallback).
#[test]
fn generated_hip_compiles_for_rdna3_with_wmma() {
    let Some(clang) = find_tool("ROCMFORGE_HIP_CLANG", "clang-19", &[]).or_else(|| {
        let p = std::path::PathBuf::from("/usr/lib/llvm-19/bin/clang");
        p.is_file().then_some(p)
    }) else {
        assert_ne!(std::env::var("ROCMFORGE_REQUIRE_AOT").as_deref(), Ok("1"), "ROCMFORGE_REQUIRE_AOT=1 but clang-19 was not found");
        eprintln!("clang-19 not found: compiled nothing for gfx1100");
        return;
    };
    let target = "gfx1100";
    let dir = std::env::temp_dir().join(format!("rocmforge-gfx1100-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ks = kernels::all().unwrap();
    let mut units: Vec<(String, bool, String)> = ks
        .iter()
        .map(|k| {
            let specs = k.specs(amd_warp_size(target));
            let wmma = matches!(k.kind, rocmforge::dsl::ir::Kind::Attention)
                && specs.iter().any(|s| s.dtype.is_some_and(|d| d.size() == 2) && s.head_dim.is_some_and(|h| h <= 128));
            (k.name.clone(), wmma, render_source(k, &specs).unwrap())
        })
        .collect();
    units.push(("engine".into(), false, rocmforge::dsl::codegen::engine_source().unwrap()));
    assert!(units.iter().filter(|u| u.1).count() >= 4, "the attention kernels with a WMMA prefill");
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = units
            .into_iter()
            .map(|(name, wmma, src)| {
                let (clang, dir) = (&clang, &dir);
                s.spawn(move || {
                    let path = dir.join(format!("{name}.hip"));
                    let out = dir.join(format!("{name}.s"));
                    std::fs::write(&path, src).unwrap();
                    let o = Command::new(clang)
                        .args(["-x", "hip", &format!("--offload-arch={target}"), "-nogpulib", "--cuda-device-only", "-O3", "-std=c++17"])
                        .args(["-Wall", "-Werror", "-S", "-o"])
                        .arg(&out)
                        .arg(&path)
                        .output()
                        .expect("run clang");
                    let log = String::from_utf8_lossy(&o.stderr).into_owned();
                    let asm = std::fs::read_to_string(&out).unwrap_or_default();
                    let ok = o.status.success() && log.trim().is_empty() && (!wmma || asm.contains("v_wmma_f32_16x16x16"));
                    (
                        name,
                        ok,
                        format!("{log}{}", if wmma && !asm.contains("v_wmma") { "no v_wmma instruction in the assembly\n" } else { "" }),
                    )
                })
            })
            .collect();
        for h in handles {
            let (what, ok, log) = h.join().unwrap();
            if !ok {
                failures.push(format!("{what} {target}:\n{log}"));
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "clang failed:\n{}", failures.join("\n"));
}

/// The CUDA side of every generated translation unit (the NVIDIA branches of the
/// templates, which only NVRTC on a GPU machine compiles otherwise): every kernel, the
/// engine kernels and the persistent decode step of each dtype and shape class, parsed
/// and type-checked for sm_90 by clang 19 in CUDA mode with `-Wall -Werror`, with the
/// device built-ins declared by `tests/common/cuda_decls.h` instead of a CUDA install.
#[test]
fn cuda_sources_parse_with_clang() {
    let Some(clang) = find_tool("ROCMFORGE_HIP_CLANG", "clang-19", &[]).or_else(|| {
        let p = std::path::PathBuf::from("/usr/lib/llvm-19/bin/clang");
        p.is_file().then_some(p)
    }) else {
        assert_ne!(std::env::var("ROCMFORGE_REQUIRE_AOT").as_deref(), Ok("1"), "ROCMFORGE_REQUIRE_AOT=1 but clang-19 was not found");
        eprintln!("clang-19 not found: checked no CUDA source");
        return;
    };
    let decls = include_str!("common/cuda_decls.h");
    let mut units: Vec<(String, String)> =
        kernels::all().unwrap().iter().map(|k| (k.name.clone(), render_source(k, &k.specs(32)).unwrap())).collect();
    units.push(("engine".into(), rocmforge::dsl::codegen::engine_source().unwrap()));
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for (dpl, group) in [(1, 2), (2, 4), (4, 8)] {
            let src = rocmforge::dsl::codegen::decode_step_source(dt, dpl, group).unwrap();
            assert!(src.contains(&format!("rf_decode_step_{}(", dt.name())));
            units.push((format!("decode_step_{}_d{dpl}_g{group}", dt.name()), src));
        }
    }
    let dir = std::env::temp_dir().join(format!("rocmforge-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = units
            .into_iter()
            .map(|(name, src)| {
                let (clang, dir) = (&clang, &dir);
                s.spawn(move || {
                    let path = dir.join(format!("{name}.cu"));
                    std::fs::write(&path, format!("{decls}\n{src}")).unwrap();
                    let o = Command::new(clang)
                        .args(["-x", "cuda", "--cuda-device-only", "-nocudainc", "-nocudalib", "--cuda-gpu-arch=sm_90"])
                        .args(["-D__CUDA_ARCH__=900", "-D__CUDA_ARCH_FEAT_SM90_ALL", "-std=c++17", "-Wall", "-Werror", "-fsyntax-only"])
                        .arg(&path)
                        .output()
                        .expect("run clang");
                    let log = String::from_utf8_lossy(&o.stderr).into_owned();
                    (name, o.status.success() && log.trim().is_empty(), log)
                })
            })
            .collect();
        for h in handles {
            let (what, ok, log) = h.join().unwrap();
            if !ok {
                failures.push(format!("{what}:\n{}", log.lines().take(20).collect::<Vec<_>>().join("\n")));
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "clang (CUDA) failed:\n{}", failures.join("\n"));
}
