//! Attention benchmark on an NVIDIA GPU, on the shapes of ../shared/GPU.md, next to the
//! PyTorch SDPA figures (`benches/attention_peer.py`, run in the same job):
//! - prefill, bf16, B 4, H 32, S 4096, d 128, causal and not, and d 64 with H 64:
//!   TFLOP/s with FlashAttention's count (4 B H S^2 d, half of it when causal);
//! - decode, one query token, KV 4096, 32 query / 8 KV heads, d 128, batch 1 and 16,
//!   contiguous and paged (16-token pages): GB/s of K/V read and the fraction of the
//!   copy bandwidth measured in the same run, next to a copy of the same bytes.
//!
//! Run: `cargo bench --features cuda --bench attention` (or the binary it builds).
//! `BENCH_ONLY=prefill|decode|combine` runs one section (for a profiler).

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used, reason = "a benchmark program")]

use std::sync::Arc;

use rocmforge::models::kernels;
use rocmforge::models::sampling::Rng;
use rocmforge::runtime::cuda::{CudaDevice, DeviceTensor};
use rocmforge::runtime::{plan_attention, Arg, AttnSeqs, DType, DeviceLimits, HostTensor, Kernel, KvIndex};

mod common;
use common::{random, same_size_copy_us, time_ms, ROTATE_BYTES};

use rocmforge::gpu_kernel;

/// The standard prefill tiles are 128 x 64 (128 x 128 up to head_dim 64); these variants
/// measure the alternatives.
#[gpu_kernel(attention(dtype = [bf16], head_dim = [64, 128], block_q = 128, block_kv = 32))]
pub fn attn_q128_kv32(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {}

/// 128 x 64 prefill tiles at head_dim 64 (the default there is 128 x 128).
#[gpu_kernel(attention(dtype = [bf16], head_dim = [64], block_q = 128, block_kv = 64))]
pub fn attn_q128_kv64(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {}

/// 64 x 64 prefill tiles (one m16 tile per warp).
#[gpu_kernel(attention(dtype = [bf16], head_dim = [64, 128], block_q = 64, block_kv = 64))]
pub fn attn_q64_kv64(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {}

fn ints(dev: &Arc<CudaDevice>, shape: &[usize], v: Vec<i32>) -> DeviceTensor {
    dev.upload(&HostTensor::from_i32(shape, v).unwrap()).unwrap()
}

/// One attention problem's device tensors: q, k, v, out and the index tensors.
struct Set {
    q: DeviceTensor,
    k: DeviceTensor,
    v: DeviceTensor,
    out: DeviceTensor,
    cu_q: DeviceTensor,
    index: Vec<DeviceTensor>,
}

#[allow(clippy::too_many_arguments, reason = "one benchmark shape")]
fn make_set(
    dev: &Arc<CudaDevice>,
    rng: &mut Rng,
    d: DType,
    b: usize,
    q_len: usize,
    kv: usize,
    h: usize,
    kvh: usize,
    hd: usize,
    page: Option<usize>,
) -> Set {
    let cu_q = ints(dev, &[b + 1], (0..=b as i32).map(|i| i * q_len as i32).collect());
    let (kv_shape, index) = match page {
        None => (vec![b * kv, kvh, hd], vec![ints(dev, &[b + 1], (0..=b as i32).map(|i| i * kv as i32).collect())]),
        Some(ps) => {
            let per = kv.div_ceil(ps);
            // Pages in a scattered order, as a long-running server's pool hands them out.
            let mut order: Vec<i32> = (0..(b * per) as i32).collect();
            for i in (1..order.len()).rev() {
                let j = ((rng.next_f32() * (i + 1) as f32) as usize).min(i);
                order.swap(i, j);
            }
            (vec![b * per, ps, kvh, hd], vec![ints(dev, &[b, per], order), ints(dev, &[b], vec![kv as i32; b])])
        }
    };
    Set {
        q: random(dev, d, &[b * q_len, h, hd], rng),
        k: random(dev, d, &kv_shape, rng),
        v: random(dev, d, &kv_shape, rng),
        out: dev.alloc(d, &[b * q_len, h, hd]).unwrap(),
        cu_q,
        index,
    }
}

fn run(dev: &Arc<CudaDevice>, k: &Kernel, sets: &[Set], q_len: usize, kv: usize, scale: f32) -> f64 {
    run_with(dev, dev.limits(), k, sets, q_len, kv, scale)
}

/// [`run`] planned for `limits` (the device's, or with a feature turned off).
fn run_with(dev: &Arc<CudaDevice>, limits: &DeviceLimits, k: &Kernel, sets: &[Set], q_len: usize, kv: usize, scale: f32) -> f64 {
    let plans: Vec<_> = sets
        .iter()
        .map(|s| {
            let kvi = match s.index.len() {
                1 => KvIndex::Contiguous { cu_k: &s.index[0] },
                _ => KvIndex::Paged { block_table: &s.index[0], kv_lens: &s.index[1] },
            };
            let seqs = AttnSeqs { cu_q: &s.cu_q, kv: kvi, max_q: q_len as u32, max_kv: kv as u32 };
            let args = [Arg::Tensor(&s.q), Arg::Tensor(&s.k), Arg::Tensor(&s.v), Arg::Tensor(&s.out), Arg::F32(scale)];
            plan_attention(k, limits, &args, &seqs).unwrap()
        })
        .collect();
    println!(
        "  plan: {} grid {:?} shared {} B workspace {} B",
        plans[0].symbol, plans[0].grid, plans[0].shared_bytes, plans[0].workspace_bytes
    );
    time_ms(dev, |i| dev.launch(k, &plans[i % plans.len()]).unwrap())
}

fn main() {
    let dev = CudaDevice::open(0).expect("open cuda:0");
    println!("device: {} ({})", dev.name(), dev.arch());
    let (full, causal) = (kernels::attention::kernel().unwrap(), kernels::attention_causal::kernel().unwrap());
    dev.prepare(&[full, causal]).expect("compile kernels");
    let mut rng = Rng::new(11);
    let copy_gbs = common::copy_bandwidth(&dev, &mut rng);
    let only = std::env::var("BENCH_ONLY").ok();
    let section = |name: &str| only.as_deref().is_none_or(|o| o == name);

    if section("prefill") {
        println!("prefill (TFLOP/s, FlashAttention's FLOP count; peers: PyTorch SDPA flash / cuDNN on the H100, ../shared/GPU.md)");
        let mut rows = Vec::new();
        for (name, k, b, h, s, hd, peer) in [
            ("non-causal", full, 4usize, 32usize, 4096usize, 128usize, "354 / 673"),
            ("causal", causal, 4, 32, 4096, 128, "294 / 603"),
            ("non-causal d64", full, 4, 64, 4096, 64, "309 / 489"),
        ] {
            let sets = vec![make_set(&dev, &mut rng, DType::BF16, b, s, s, h, h, hd, None)];
            let ms = run(&dev, k, &sets, s, s, 1.0 / (hd as f32).sqrt());
            let mut flops = 4.0 * (b * h * s * s * hd) as f64;
            if k.name == "attention_causal" {
                flops /= 2.0;
            }
            let tflops = flops / (ms * 1e-3) / 1e12;
            rows.push(format!("{:<38} {:>10.1} {:>9.0}  {peer}", format!("bf16 B{b} H{h} S{s} d{hd} {name}"), ms * 1e3, tflops));
        }
        println!("{:<38} {:>10} {:>9}  peer flash / cuDNN", "shape", "median us", "TFLOP/s");
        rows.iter().for_each(|r| println!("{r}"));
        println!("\nprefill tile variants, bf16 B4 S4096 non-causal (standard: 128 x 64 at d128, 128 x 128 at d64):");
        for (name, k) in [("128 x 32", attn_q128_kv32::kernel().unwrap()), ("64 x 64", attn_q64_kv64::kernel().unwrap())] {
            for (h, hd) in [(32usize, 128usize), (64, 64)] {
                let (b, s) = (4usize, 4096usize);
                let sets = vec![make_set(&dev, &mut rng, DType::BF16, b, s, s, h, h, hd, None)];
                let ms = run(&dev, k, &sets, s, s, 1.0 / (hd as f32).sqrt());
                let tflops = 4.0 * (b * h * s * s * hd) as f64 / (ms * 1e-3) / 1e12;
                println!("  {name:<10} H{h} d{hd}: {:>8.1} us {tflops:>6.0} TFLOP/s", ms * 1e3);
            }
        }

        {
            let (b, s, h, hd) = (4usize, 4096usize, 64usize, 64usize);
            let sets = vec![make_set(&dev, &mut rng, DType::BF16, b, s, s, h, h, hd, None)];
            let ms = run(&dev, attn_q128_kv64::kernel().unwrap(), &sets, s, s, 1.0 / (hd as f32).sqrt());
            let tflops = 4.0 * (b * h * s * s * hd) as f64 / (ms * 1e-3) / 1e12;
            println!("  128 x 64   H{h} d{hd}: {:>8.1} us {tflops:>6.0} TFLOP/s", ms * 1e3);
        }
    }

    if section("decode") {
        println!("\ndecode (one query token, KV 4096, 32/8 heads, d 128; peer: PyTorch SDPA fp16, 445 GB/s at batch 1, 2937 at batch 16)");
        let mut rows = Vec::new();
        for d in [DType::BF16, DType::F16] {
            for b in [1usize, 16] {
                for page in [None, Some(16)] {
                    let (h, kvh, hd, kv) = (32usize, 8usize, 128usize, 4096usize);
                    let kv_bytes = 2 * b * kv * kvh * hd * d.size();
                    let bytes = kv_bytes + 2 * b * h * hd * d.size();
                    let n = ROTATE_BYTES.div_ceil(bytes).max(2);
                    let sets: Vec<Set> = (0..n).map(|_| make_set(&dev, &mut rng, d, b, 1, kv, h, kvh, hd, page)).collect();
                    let ms = run(&dev, causal, &sets, 1, kv, 1.0 / (hd as f32).sqrt());
                    let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
                    let same = same_size_copy_us(&dev, bytes);
                    let layout = page.map_or("contiguous".to_string(), |p| format!("paged {p}"));
                    rows.push(format!(
                        "{:<38} {:>10.1} {:>9.0} {:>8.2} {:>10.1} {:>8.2}",
                        format!("{d} batch {b} {layout}"),
                        ms * 1e3,
                        gbs,
                        gbs / copy_gbs,
                        same,
                        same / (ms * 1e3)
                    ));
                }
            }
        }
        println!("{:<38} {:>10} {:>9} {:>8} {:>10} {:>8}", "shape", "median us", "GB/s", "of copy", "copy us", "vs copy");
        rows.iter().for_each(|r| println!("{r}"));
        println!("\n(bytes: K and V read once, q read and out written; copy us: a device copy of the same bytes, timed the same way)");
    }

    if dev.limits().clusters && section("combine") {
        // Two to eight splits of a tile combine in a thread-block cluster; the same launch
        // planned without clusters combines through the global workspace.
        println!("\ndecode split combine, bf16, paged 16, one query token: cluster (sm_90) vs workspace, median us");
        let no_clusters = DeviceLimits { clusters: false, ..*dev.limits() };
        for (b, h, kvh, hd, kv) in [(1usize, 32usize, 8usize, 64usize, 1024usize), (1, 32, 8, 128, 1024), (16, 32, 8, 128, 4096)] {
            let d = DType::BF16;
            let bytes = 2 * b * kv * kvh * hd * d.size() + 2 * b * h * hd * d.size();
            let n = ROTATE_BYTES.div_ceil(bytes).max(2);
            let sets: Vec<Set> = (0..n).map(|_| make_set(&dev, &mut rng, d, b, 1, kv, h, kvh, hd, Some(16))).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let with = run_with(&dev, dev.limits(), causal, &sets, 1, kv, scale);
            let without = run_with(&dev, &no_clusters, causal, &sets, 1, kv, scale);
            println!("  batch {b:>2} KV {kv} {h}/{kvh} heads d {hd}: cluster {:.1} us, workspace {:.1} us", with * 1e3, without * 1e3);
        }
    }
}
