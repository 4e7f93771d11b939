//! Attention on the CPU: the interpreter against the independent f64 reference of
//! `tests/common/attn_ref.rs` for every standard attention kernel and dtype, contiguous
//! and paged (scattered pages), GQA, odd lengths, windows and fully masked rows; and the
//! launch plans (decode vs prefill, split count, workspace, every typed refusal).
//!
//! Bounds: the interpreter computes scores and the softmax in f64 from the stored
//! inputs, modifiers in f32, and rounds the output to the dtype, so the nMSE is the
//! output rounding (relative 2^-24 / 2^-11 / 2^-8 per element, squared) with room.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

#[path = "common/attn_ref.rs"]
#[allow(dead_code, reason = "shared with the GPU self-check, which uses all of it")]
mod attn_ref;

use attn_ref::{build, nmse, variant_of, Problem};
use rocmforge::dsl::interp::{self, HostArg, HostTensor};
use rocmforge::dsl::DType;
use rocmforge::models::kernels;
use rocmforge::models::sampling::Rng;
use rocmforge::runtime::{AttnSeqs, DeviceLimits, KvIndex, LaunchError, TensorDesc};

fn bound(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-10,
        DType::F16 => 1e-6,
        _ => 2e-5,
    }
}

fn scalar_for(kernel: &str) -> Option<HostArg> {
    match kernel {
        "attention_window" => Some(HostArg::I32(5)),
        "attention_softcap" => Some(HostArg::F32(2.0)),
        "attention_alibi" => Some(HostArg::F32(-8.0 / 8.0)),
        _ => None,
    }
}

#[test]
fn interpreter_matches_f64_reference() {
    let mut rng = Rng::new(7);
    let problems = [
        // GQA 4, odd lengths, queries at the end of longer caches, one single-token run.
        (Problem { heads: 8, kv_heads: 2, d: 0, q_lens: vec![1, 17, 5], kv_lens: vec![1, 17, 40] }, None),
        // Paged with scattered 16-token pages; GQA 1.
        (Problem { heads: 2, kv_heads: 2, d: 0, q_lens: vec![1, 3], kv_lens: vec![33, 50] }, Some(16)),
        // More queries than positions: the first rows see nothing under a causal mask.
        (Problem { heads: 8, kv_heads: 1, d: 0, q_lens: vec![5], kv_lens: vec![3] }, Some(32)),
    ];
    let mut checked = 0;
    for k in kernels::all().unwrap().into_iter().filter(|k| k.kind == rocmforge::dsl::ir::Kind::Attention) {
        let extra = scalar_for(&k.name);
        let sval = match extra {
            Some(HostArg::I32(v)) => v as f32,
            Some(HostArg::F32(v)) => v,
            _ => 0.0,
        };
        let var = variant_of(&k.name, sval).unwrap();
        for &dtype in &k.options.dtypes {
            for (p, page) in &problems {
                let p = Problem { d: k.options.head_dims[0] as usize, ..p.clone() };
                let scale = 1.0 / (p.d as f32).sqrt();
                let mut scalars = vec![HostArg::F32(scale)];
                scalars.extend(extra.clone());
                let case = build(&p, dtype, *page, &scalars, 2.0, &mut || rng.next_f32());
                let want = case.reference(&p, f64::from(scale), var);
                let mut args = case.host.clone();
                interp::run(k, &mut args).unwrap();
                let got = args[3].tensor().unwrap().to_f32_vec();
                let e = nmse(&got, &want);
                assert!(e <= bound(dtype), "{} {dtype} {p:?} paged {page:?}: nmse {e:e}", k.name);
                if p.kv_lens == [3] && var != attn_ref::Variant::Full {
                    // q_pos -2 and -1 see nothing: exact zeros, not NaN.
                    let row = p.heads * p.d;
                    assert!(got[..2 * row].iter().all(|&x| x == 0.0), "{}: fully masked rows are not zero", k.name);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * (3 + 3 + 3 + 2 + 2));
}

fn desc(dtype: DType, shape: &[usize]) -> TensorDesc {
    TensorDesc::new(dtype, shape, 0x1000)
}

struct Shapes {
    q: TensorDesc,
    k: TensorDesc,
    v: TensorDesc,
    out: TensorDesc,
    cu_q: TensorDesc,
    cu_k: TensorDesc,
}

fn shapes(dtype: DType, batch: usize, q_len: usize, kv_len: usize, heads: usize, kv_heads: usize, d: usize) -> Shapes {
    Shapes {
        q: desc(dtype, &[batch * q_len, heads, d]),
        k: desc(dtype, &[batch * kv_len, kv_heads, d]),
        v: desc(dtype, &[batch * kv_len, kv_heads, d]),
        out: desc(dtype, &[batch * q_len, heads, d]),
        cu_q: desc(DType::I32, &[batch + 1]),
        cu_k: desc(DType::I32, &[batch + 1]),
    }
}

/// Parameters of `symbol`'s generated signature.
fn signature_len(kernel: &rocmforge::runtime::Kernel, plan: &rocmforge::runtime::LaunchPlan) -> usize {
    let src = rocmforge::dsl::codegen::render_spec(kernel, &plan.spec).unwrap();
    let at = src.find(&format!(" {}(", plan.symbol)).unwrap_or_else(|| panic!("{} not in the source", plan.symbol));
    let rest = &src[at + plan.symbol.len() + 2..];
    rest[..rest.find(')').unwrap()].split(',').count()
}

#[test]
fn plans_pass_one_argument_per_kernel_parameter() {
    let nv = DeviceLimits::NVIDIA_SM90;
    let k = kernels::attention_window::kernel().unwrap();
    let mut s = shapes(DType::F16, 2, 100, 100, 8, 2, 64);
    let table = desc(DType::I32, &[2, 4]);
    let lens = desc(DType::I32, &[2]);
    let kp = desc(DType::F16, &[8, 32, 2, 64]);
    for (max_q, paged) in [(1, false), (100, false), (1, true), (100, true)] {
        let kv = if paged { KvIndex::Paged { block_table: &table, kv_lens: &lens } } else { KvIndex::Contiguous { cu_k: &s.cu_k } };
        let seqs = AttnSeqs { cu_q: &s.cu_q, kv, max_q, max_kv: 100 };
        let (kk, vv) = if paged { (&kp, &kp) } else { (&s.k, &s.v) };
        let p = kernels::attention_window::plan(&nv, &s.q, kk, vv, &mut s.out, 0.1, 16, &seqs).unwrap();
        assert_eq!(p.args.len(), signature_len(k, &p), "{} (paged {paged})", p.symbol);
    }
    let kn = desc(DType::F16, &[5, 2, 64]);
    let (mut kc, mut vc) = (kp.clone(), kp.clone());
    let slots = desc(DType::I32, &[5]);
    let p = kernels::attention_window::plan_kv_store(&nv, &kn, &kn, &mut kc, &mut vc, &slots).unwrap();
    assert_eq!(p.args.len(), signature_len(k, &p), "{}", p.symbol);
}

#[test]
fn plans_pick_decode_or_prefill_and_size_the_splits() {
    let nv = DeviceLimits::NVIDIA_SM90;
    // Decode: batch 1, 32 heads over 8 kv heads, 8192 positions: split across the SMs,
    // at least 512 positions a split.
    let mut s = shapes(DType::BF16, 1, 1, 8192, 32, 8, 128);
    let seqs = AttnSeqs { cu_q: &s.cu_q, kv: KvIndex::Contiguous { cu_k: &s.cu_k }, max_q: 1, max_kv: 8192 };
    let p = kernels::attention_causal::plan(&nv, &s.q, &s.k, &s.v, &mut s.out, 0.1, &seqs).unwrap();
    assert!(p.symbol.ends_with("_decode_mma"), "{}", p.symbol);
    assert_eq!(p.grid[1], 8, "one row of tiles per kv head");
    assert_eq!(p.grid[2], 16, "8192 positions in splits of 512");
    // More splits than a cluster holds combine through the workspace.
    assert!(p.workspace_bytes > 0);
    assert_eq!(p.cluster_z, 1);
    // Short contexts take fewer, longer splits: 600 positions are two splits, one cluster.
    let mut s600 = shapes(DType::BF16, 1, 1, 600, 32, 8, 128);
    let seqs600 = AttnSeqs { cu_q: &s600.cu_q, kv: KvIndex::Contiguous { cu_k: &s600.cu_k }, max_q: 1, max_kv: 600 };
    let p600 = kernels::attention_causal::plan(&nv, &s600.q, &s600.k, &s600.v, &mut s600.out, 0.1, &seqs600).unwrap();
    assert_eq!((p600.grid[2], p600.cluster_z, p600.workspace_bytes), (2, 2, 0));
    // Batch 16 needs fewer splits; on sm_90 they form one cluster per tile (no workspace),
    // elsewhere they combine through the workspace.
    let mut s16 = shapes(DType::BF16, 16, 1, 4096, 32, 8, 128);
    let seqs16 = AttnSeqs { cu_q: &s16.cu_q, kv: KvIndex::Contiguous { cu_k: &s16.cu_k }, max_q: 1, max_kv: 4096 };
    let p16 = kernels::attention_causal::plan(&nv, &s16.q, &s16.k, &s16.v, &mut s16.out, 0.1, &seqs16).unwrap();
    assert!(1 < p16.grid[2] && p16.grid[2] < p.grid[2], "splits {}", p16.grid[2]);
    assert_eq!((p16.cluster_z, p16.workspace_bytes), (p16.grid[2], 0));
    let no_clusters = DeviceLimits { clusters: false, ..nv };
    let w16 = kernels::attention_causal::plan(&no_clusters, &s16.q, &s16.k, &s16.v, &mut s16.out, 0.1, &seqs16).unwrap();
    assert_eq!((w16.grid, w16.cluster_z), (p16.grid, 1));
    assert!(w16.workspace_bytes > 0);
    // Prefill of bf16 on an sm_90 device: the matrix-core kernel, > 48 KiB shared.
    let mut sp = shapes(DType::BF16, 2, 1000, 1000, 8, 2, 128);
    let seqs_p = AttnSeqs { cu_q: &sp.cu_q, kv: KvIndex::Contiguous { cu_k: &sp.cu_k }, max_q: 1000, max_kv: 1000 };
    let pp = kernels::attention_causal::plan(&nv, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs_p).unwrap();
    assert!(!pp.symbol.ends_with("_decode"));
    assert_eq!(pp.grid, [8, 8, 2]);
    assert!(pp.shared_bytes > 48 * 1024 && pp.shared_bytes <= nv.max_shared_bytes);
    assert_eq!(pp.workspace_bytes, 0);
    // The same prefill on AMD (the MFMA path off, as it is unless ROCMFORGE_MFMA=1) and in
    // f32 runs the portable kernel.
    let pa = kernels::attention_causal::plan(&DeviceLimits::AMD_CDNA, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs_p).unwrap();
    assert!(pa.symbol.ends_with("_decode"));
    // With the MFMA path on: the prefill kernel with its 64 x 32 tiles (Q, one K and one V
    // tile of 136-element rows in LDS), within the CDNA's 64 KiB; decode stays portable.
    let cdna = DeviceLimits { mfma: true, ..DeviceLimits::AMD_CDNA };
    let pm = kernels::attention_causal::plan(&cdna, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs_p).unwrap();
    assert_eq!(pm.symbol, pp.symbol);
    assert_eq!(pm.grid, [16, 8, 2], "1000 query rows in tiles of 64");
    assert_eq!(pm.shared_bytes, (64 + 2 * 32) * 136 * 2);
    assert!(pm.shared_bytes <= cdna.max_shared_bytes);
    // The RDNA3 WMMA path (with ROCMFORGE_WMMA=1): the same symbol, 64-row query tiles,
    // Q and one K tile of 136-element rows plus V transposed (128 rows of 40).
    let rdna3 = DeviceLimits { wmma: true, ..DeviceLimits::AMD_RDNA };
    let pw = kernels::attention_causal::plan(&rdna3, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs_p).unwrap();
    assert_eq!((pw.symbol.as_str(), pw.grid, pw.block), (pp.symbol.as_str(), [16, 8, 2], [128, 1, 1]));
    assert_eq!(pw.shared_bytes, (64 + 32) * 136 * 2 + 128 * 40 * 2);
    let pwd = kernels::attention_causal::plan(&rdna3, &s.q, &s.k, &s.v, &mut s.out, 0.1, &seqs).unwrap();
    assert!(pwd.symbol.ends_with("_decode"), "{}", pwd.symbol);
    assert!(kernels::attention_causal::plan(&DeviceLimits::AMD_RDNA, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs_p)
        .unwrap()
        .symbol
        .ends_with("_decode"));
    let pmd = kernels::attention_causal::plan(&cdna, &s.q, &s.k, &s.v, &mut s.out, 0.1, &seqs).unwrap();
    assert!(pmd.symbol.ends_with("_decode"), "{}", pmd.symbol);
    // head_dim 256 has no MFMA kernel (its accumulators would not fit): portable.
    let mut s256 = shapes(DType::BF16, 1, 300, 300, 4, 4, 256);
    let seqs256 = AttnSeqs { cu_q: &s256.cu_q, kv: KvIndex::Contiguous { cu_k: &s256.cu_k }, max_q: 300, max_kv: 300 };
    let p256 = kernels::attention::plan(&cdna, &s256.q, &s256.k, &s256.v, &mut s256.out, 0.1, &seqs256).unwrap();
    assert!(p256.symbol.ends_with("_decode"), "{}", p256.symbol);
    let mut sf = shapes(DType::F32, 2, 1000, 1000, 8, 2, 128);
    let seqs_f = AttnSeqs { cu_q: &sf.cu_q, kv: KvIndex::Contiguous { cu_k: &sf.cu_k }, max_q: 1000, max_kv: 1000 };
    let pf = kernels::attention_causal::plan(&nv, &sf.q, &sf.k, &sf.v, &mut sf.out, 0.1, &seqs_f).unwrap();
    assert!(pf.symbol.ends_with("_decode"));
}

#[test]
fn plans_take_the_hopper_kernel_for_head_dim_128_prefill() {
    use rocmforge::dsl::spec::{has_wgmma_prefill, wgmma_prefill_shared_bytes};
    let hopper = DeviceLimits { wgmma: true, ..DeviceLimits::NVIDIA_SM90 };
    let k = kernels::attention_causal::kernel().unwrap();
    // bf16 and f16 prefill at head_dim 128: the warpgroup kernel, two warpgroups, 128-row
    // query tiles, Q and two stages of K and V (128 x 128, unpadded) plus the 1 KiB of
    // alignment slack, and one argument per parameter of its signature.
    for dtype in [DType::BF16, DType::F16] {
        let mut sp = shapes(dtype, 2, 1000, 1000, 8, 2, 128);
        let seqs = AttnSeqs { cu_q: &sp.cu_q, kv: KvIndex::Contiguous { cu_k: &sp.cu_k }, max_q: 1000, max_kv: 1000 };
        let p = kernels::attention_causal::plan(&hopper, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs).unwrap();
        assert!(p.symbol.ends_with("_wgmma"), "{}", p.symbol);
        assert_eq!((p.grid, p.block), ([8, 8, 2], [256, 1, 1]));
        assert_eq!(p.shared_bytes, (128 + 4 * 128) * 128 * 2 + 1024);
        assert_eq!(p.shared_bytes, wgmma_prefill_shared_bytes());
        assert!(p.shared_bytes <= hopper.max_shared_bytes);
        assert_eq!(p.args.len(), signature_len(k, &p), "{}", p.symbol);
        // Without wgmma (any device but compute capability 9.0, or ROCMFORGE_WGMMA=0):
        // the mma.sync kernel.
        let q = kernels::attention_causal::plan(&DeviceLimits::NVIDIA_SM90, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs).unwrap();
        assert_eq!((q.symbol.clone() + "_wgmma", q.block), (p.symbol.clone(), [128, 1, 1]));
        // A device whose workgroups get less shared memory than its tiles: mma.sync.
        let small = DeviceLimits { max_shared_bytes: 160 * 1024, ..hopper };
        let r = kernels::attention_causal::plan(&small, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs).unwrap();
        assert_eq!((r.symbol.as_str(), r.block), (q.symbol.as_str(), [128, 1, 1]));
        // Decode is unchanged.
        let seqs1 = AttnSeqs { cu_q: &sp.cu_q, kv: KvIndex::Contiguous { cu_k: &sp.cu_k }, max_q: 1, max_kv: 1000 };
        let d = kernels::attention_causal::plan(&hopper, &sp.q, &sp.k, &sp.v, &mut sp.out, 0.1, &seqs1).unwrap();
        assert!(d.symbol.ends_with("_decode_mma"), "{}", d.symbol);
    }
    // Other head dims keep the mma.sync kernel.
    let mut s64 = shapes(DType::BF16, 1, 300, 300, 4, 4, 64);
    let seqs64 = AttnSeqs { cu_q: &s64.cu_q, kv: KvIndex::Contiguous { cu_k: &s64.cu_k }, max_q: 300, max_kv: 300 };
    let p64 = kernels::attention::plan(&hopper, &s64.q, &s64.k, &s64.v, &mut s64.out, 0.1, &seqs64).unwrap();
    assert!(!p64.symbol.ends_with("_wgmma") && p64.block == [128, 1, 1], "{}", p64.symbol);
    // Explicit tile options name the mma.sync kernel they describe.
    let spec = k.specs(32).into_iter().find(|s| s.head_dim == Some(128) && s.dtype == Some(DType::BF16)).unwrap();
    assert!(has_wgmma_prefill(k, &spec, DType::BF16));
    assert!(!has_wgmma_prefill(k, &spec, DType::F32));
    let mut tiled = k.clone();
    tiled.options.block_kv = Some(64);
    assert!(!has_wgmma_prefill(&tiled, &spec, DType::BF16));
    tiled.options.block_kv = None;
    tiled.options.block_q = 64;
    assert!(!has_wgmma_prefill(&tiled, &spec, DType::BF16));
}

#[test]
fn plans_refuse_bad_attention_arguments() {
    let nv = DeviceLimits::NVIDIA_SM90;
    let run = |s: &mut Shapes, max_q: u32| {
        let seqs = AttnSeqs { cu_q: &s.cu_q, kv: KvIndex::Contiguous { cu_k: &s.cu_k }, max_q, max_kv: 16 };
        kernels::attention::plan(&nv, &s.q, &s.k, &s.v, &mut s.out, 0.1, &seqs)
    };
    // A head dim with no specialization names the supported ones.
    let mut s = shapes(DType::BF16, 1, 4, 16, 4, 4, 72);
    match run(&mut s, 4) {
        Err(LaunchError::UnsupportedSpecialization { what: "head_dim", value: 72, supported, .. }) => {
            assert_eq!(supported, vec![64, 80, 96, 128, 256])
        }
        other => panic!("{other:?}"),
    }
    // kv heads that do not divide the heads.
    let mut s = shapes(DType::BF16, 1, 4, 16, 6, 4, 64);
    assert!(matches!(run(&mut s, 4), Err(LaunchError::Args(rocmforge::runtime::ArgError::Shape { .. }))));
    // Misaligned tensor.
    let mut s = shapes(DType::BF16, 1, 4, 16, 4, 4, 64);
    s.k.ptr = 0x1002;
    assert!(matches!(run(&mut s, 4), Err(LaunchError::Limit { value: 0x1002, .. })));
    // cu_k of the wrong length; k of the wrong rank; max_q past the tokens or zero.
    let mut s = shapes(DType::BF16, 1, 4, 16, 4, 4, 64);
    s.cu_k.shape = vec![3];
    assert!(matches!(run(&mut s, 4), Err(LaunchError::Args(rocmforge::runtime::ArgError::Shape { .. }))));
    let mut s = shapes(DType::BF16, 1, 4, 16, 4, 4, 64);
    s.k.shape = vec![16, 256];
    assert!(matches!(run(&mut s, 4), Err(LaunchError::Args(rocmforge::runtime::ArgError::Rank { .. }))));
    let mut s = shapes(DType::BF16, 1, 4, 16, 4, 4, 64);
    assert!(matches!(run(&mut s, 5), Err(LaunchError::Limit { .. })));
    assert!(matches!(run(&mut s, 0), Err(LaunchError::Limit { .. })));
    // Paged K/V with a block table for another batch size.
    let mut s = shapes(DType::BF16, 2, 4, 16, 4, 4, 64);
    let kp = desc(DType::BF16, &[8, 16, 4, 64]);
    let table = desc(DType::I32, &[3, 4]);
    let lens = desc(DType::I32, &[2]);
    let seqs = AttnSeqs { cu_q: &s.cu_q, kv: KvIndex::Paged { block_table: &table, kv_lens: &lens }, max_q: 4, max_kv: 16 };
    let e = kernels::attention::plan(&nv, &s.q, &kp, &kp, &mut s.out, 0.1, &seqs).unwrap_err();
    assert!(e.to_string().contains("block_table"), "{e}");
    // Pages of a size that is not a power of two (the kernels shift to find a page).
    let kp24 = desc(DType::BF16, &[8, 24, 4, 64]);
    let table = desc(DType::I32, &[2, 4]);
    let seqs = AttnSeqs { cu_q: &s.cu_q, kv: KvIndex::Paged { block_table: &table, kv_lens: &lens }, max_q: 4, max_kv: 16 };
    let e = kernels::attention::plan(&nv, &s.q, &kp24, &kp24, &mut s.out, 0.1, &seqs).unwrap_err();
    assert!(e.to_string().contains("power-of-two page_size"), "{e}");
    // The generic planner points to the attention launcher.
    let a = kernels::attention::kernel().unwrap();
    let e = rocmforge::runtime::plan(a, &nv, &[]).unwrap_err();
    assert!(e.to_string().contains("attention"), "{e}");
}

#[test]
fn kv_store_plan_checks_shapes() {
    let nv = DeviceLimits::NVIDIA_SM90;
    let kn = desc(DType::F16, &[5, 2, 64]);
    let mut kc = desc(DType::F16, &[4, 16, 2, 64]);
    let mut vc = desc(DType::F16, &[4, 16, 2, 64]);
    let slots = desc(DType::I32, &[5]);
    let p = kernels::attention::plan_kv_store(&nv, &kn, &kn, &mut kc, &mut vc, &slots).unwrap();
    assert!(p.symbol.ends_with("_kvstore"));
    let bad = desc(DType::I32, &[4]);
    assert!(kernels::attention::plan_kv_store(&nv, &kn, &kn, &mut kc, &mut vc, &bad).is_err());
    let mut wrong = desc(DType::F16, &[4, 16, 3, 64]);
    assert!(kernels::attention::plan_kv_store(&nv, &kn, &kn, &mut wrong, &mut vc, &slots).is_err());
}

#[test]
fn wmma_archs_are_the_ones_the_header_compiles_the_kernel_for() {
    // The `#if` that defines RF_WMMA in the portability header (possibly continued over
    // lines): every `__gfxNNNN__` it names, against the list the HIP device checks.
    let h = rocmforge::dsl::codegen::PORTABILITY_HEADER;
    let end = h.find("#define RF_WMMA 1").expect("the header defines RF_WMMA");
    let start = h[..end].rfind("#if ").expect("an #if before it");
    let mut named: Vec<&str> =
        h[start..end].split("defined(__").filter_map(|p| p.split("__)").next()).filter(|a| a.starts_with("gfx")).collect();
    named.sort_unstable();
    let mut listed = rocmforge::dsl::spec::WMMA_ARCHS.to_vec();
    listed.sort_unstable();
    assert_eq!(named, listed);
}
