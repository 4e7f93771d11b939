//! Devices without a GPU: the CPU device runs kernels through the interpreter; naming a
//! GPU gives a typed error (not compiled in, or unavailable), never a crash; hiprtc
//! compiles generated kernels for AMD targets with no GPU present (feature `rocm`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use rocmforge_runtime::{Backend, Device, DeviceError, HostArg, HostTensor};

#[test]
fn the_cpu_device_opens_describes_itself_and_runs_kernels() {
    let dev = Device::open("cpu").unwrap();
    assert_eq!(dev.backend(), Backend::Cpu);
    let info = dev.info();
    assert_eq!(info.id, "cpu");
    assert!(info.compute_units >= 1 && info.memory_total > 0 && info.memory_free <= info.memory_total, "{info:?}");
    let list = Device::list();
    assert_eq!(list.last().map(|d| d.backend), Some(Backend::Cpu));

    let k =
        rocmforge_runtime::dsl::parse::parse_str("elementwise", "fn twice_plus(x: &[f32], y: &mut [f32], b: f32) { *y = 2.0 * x + b; }")
            .unwrap();
    let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
    let mut args = vec![
        HostArg::Tensor(HostTensor::from_f32(rocmforge_runtime::DType::F32, &[37], &x).unwrap()),
        HostArg::Tensor(HostTensor::from_f32(rocmforge_runtime::DType::F32, &[37], &[f32::NAN; 37]).unwrap()),
        HostArg::F32(0.25),
    ];
    let Device::Cpu(cpu) = &dev else { panic!("not the cpu") };
    cpu.run(&k, &mut args).unwrap();
    let y = args[1].tensor().unwrap().to_f32_vec();
    for (a, b) in x.iter().zip(&y) {
        assert_eq!(*b, 2.0 * a + 0.25);
    }
    // A wrong shape is a typed error before anything runs.
    let mut bad = vec![
        HostArg::Tensor(HostTensor::from_f32(rocmforge_runtime::DType::F32, &[4], &[1.0; 4]).unwrap()),
        HostArg::Tensor(HostTensor::from_f32(rocmforge_runtime::DType::F32, &[5], &[0.0; 5]).unwrap()),
        HostArg::F32(0.0),
    ];
    assert!(cpu.run(&k, &mut bad).is_err());
}

#[test]
fn a_missing_gpu_is_a_typed_error() {
    for name in ["cuda:0", "hip:0", "cuda:7"] {
        let e = Device::open(name).unwrap_err();
        match e {
            DeviceError::NotCompiled { feature, .. } => assert!(["cuda", "rocm"].contains(&feature)),
            // Compiled in, but no GPU (or no driver) on this machine.
            DeviceError::Unavailable { ref reason, .. } => assert!(!reason.is_empty()),
            other => panic!("{name}: {other}"),
        }
    }
    assert!(matches!(Device::open("tpu:0"), Err(DeviceError::BadName { .. })));
}

#[test]
fn rocmforge_device_picks_the_default() {
    // The only test that touches the variable.
    std::env::set_var("ROCMFORGE_DEVICE", "cpu");
    assert_eq!(Device::default_device().unwrap().backend(), Backend::Cpu);
    std::env::set_var("ROCMFORGE_DEVICE", "quantum:0");
    assert!(matches!(Device::default_device(), Err(DeviceError::BadName { .. })));
    std::env::remove_var("ROCMFORGE_DEVICE");
    // With no GPU on this machine the default falls back to the CPU.
    let d = Device::default_device().unwrap();
    assert!(d.backend() == Backend::Cpu || Device::list().len() > 1);
}

#[cfg(feature = "rocm")]
#[test]
fn hiprtc_compiles_generated_kernels_without_a_gpu() {
    use rocmforge_runtime::dsl::codegen::render_source;
    // One declaration's first wave64 specialization: its symbol, source and code object.
    let compile = |kind: &str, body: &str| {
        let k = rocmforge_runtime::dsl::parse::parse_str(kind, body).unwrap();
        let spec = k.specs(64)[0];
        let src = render_source(&k, &[spec]).unwrap();
        let code = match rocmforge_runtime::hip::hiprtc_compile(&src, "gfx90a") {
            Ok(c) => c,
            Err((msg, log)) => panic!("{msg}\n{log}"),
        };
        (rocmforge_runtime::dsl::symbol_name(&k.name, &spec), src, code)
    };
    let (sym, _, code) = compile(
        "rowwise(dtype = [bf16], block = [256])",
        "fn rmsnorm(x: &Rows<T>, w: &[T], out: &mut Rows<T>, eps: f32) { *out = x * rsqrt(mean(x * x) + eps) * w; }",
    );
    assert_eq!(&code[..4], b"\x7fELF", "a code object");
    // Both kernels of the specialization are in it.
    let has = |code: &[u8], s: &str| code.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has(&code, &sym) && has(&code, &format!("{sym}_wide")));
    // Attention, whose prefill has an MFMA body on gfx90a, compiles at run time too.
    let (asym, asrc, acode) = compile(
        "attention(dtype = [bf16], head_dim = [128])",
        "fn attn(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) { mask!(kv_pos <= q_pos); }",
    );
    assert!(asrc.contains("defined(RF_MFMA)"));
    assert!(has(&acode, &asym), "{asym} in the code object");
    // A compile error carries the compiler's log.
    let (msg, log) = rocmforge_runtime::hip::hiprtc_compile("this is not C++", "gfx90a").unwrap_err();
    assert!(msg.contains("hiprtcCompileProgram"), "{msg}");
    assert!(!log.is_empty());
}
