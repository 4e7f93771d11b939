//! Every generated kernel (and the engine kernels) compiled by hipcc with `-Wall -Werror`: gfx90a (wave64, the
//! CDNA path) and gfx1030 (wave32, the RDNA path).
//!
//! Without hipcc the test fails when `ROCMFORGE_REQUIRE_AOT=1` (as in CI) and otherwise
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
