//! Memory-bound kernel benchmark on an NVIDIA GPU: the device's copy bandwidth measured
//! in the same run, then each standard kernel at LLM sizes: bytes moved (each input read
//! once, each output written once), median time over many launches after warm-up
//! (device events, inputs rotated across enough buffer sets that L2 cannot hold them),
//! GB/s and the fraction of the copy bandwidth, next to the torch.compile figure
//! measured on the same kind of card (../shared/GPU.md).
//!
//! Run: `cargo bench --features cuda --bench kernels` (or the binary it builds).

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used, reason = "a benchmark program")]

use std::sync::Arc;

use rocmforge::dsl::rope::{inv_freq, RopeScaling};
use rocmforge::models::kernels;
use rocmforge::models::sampling::Rng;
use rocmforge::runtime::cuda::{CudaDevice, DeviceTensor};
use rocmforge::runtime::{plan, Arg, DType, HostTensor, Kernel};

mod common;
use common::{random, same_size_copy_us, time_ms, ROTATE_BYTES};

struct Case {
    name: String,
    peer: &'static str,
    bytes: usize,
    ms: f64,
}

/// Runs `k` over `sets` rotating argument sets; `tensors` gives, per set, the tensor
/// arguments in parameter order, and `scalars` the scalars by parameter index.
fn bench(dev: &Arc<CudaDevice>, k: &Kernel, sets: &[Vec<DeviceTensor>], scalars: &[(usize, f32)]) -> f64 {
    let plans: Vec<_> = sets
        .iter()
        .map(|set| {
            let mut ti = set.iter();
            let args: Vec<Arg<'_>> = (0..k.params.len())
                .map(|p| match scalars.iter().find(|(j, _)| *j == p) {
                    Some((_, v)) => Arg::F32(*v),
                    None => Arg::Tensor(ti.next().unwrap()),
                })
                .collect();
            plan(k, dev.limits(), &args).unwrap()
        })
        .collect();
    time_ms(dev, |i| dev.launch(k, &plans[i % plans.len()]).unwrap())
}

fn main() {
    let dev = CudaDevice::open(0).expect("open cuda:0");
    println!("device: {} ({})", dev.name(), dev.arch());
    dev.prepare(&kernels::all().unwrap()).expect("compile kernels");
    let mut rng = Rng::new(7);

    let copy_gbs = common::copy_bandwidth(&dev, &mut rng);
    let mut cases = Vec::new();
    let (r, c) = (4096usize, 4096usize);
    for d in [DType::BF16, DType::F16] {
        let set_bytes = 2 * r * c * d.size();
        let n = ROTATE_BYTES.div_ceil(set_bytes).max(2);
        let sets: Vec<Vec<DeviceTensor>> = (0..n)
            .map(|_| vec![random(&dev, d, &[r, c], &mut rng), random(&dev, d, &[c], &mut rng), dev.alloc(d, &[r, c]).unwrap()])
            .collect();
        let ms = bench(&dev, kernels::rmsnorm::kernel().unwrap(), &sets, &[(3, 1e-5)]);
        cases.push(Case {
            name: format!("rmsnorm {d} {r}x{c}"),
            peer: "852 GB/s (fp16, torch.compile)",
            bytes: set_bytes + c * d.size(),
            ms,
        });

        let set_bytes = 4 * r * c * d.size();
        let n = ROTATE_BYTES.div_ceil(set_bytes).max(2);
        let sets: Vec<Vec<DeviceTensor>> = (0..n)
            .map(|_| {
                vec![
                    random(&dev, d, &[r, c], &mut rng),
                    random(&dev, d, &[r, c], &mut rng),
                    random(&dev, d, &[c], &mut rng),
                    dev.alloc(d, &[r, c]).unwrap(),
                ]
            })
            .collect();
        let ms = bench(&dev, kernels::add_rmsnorm::kernel().unwrap(), &sets, &[(4, 1e-5)]);
        cases.push(Case { name: format!("add_rmsnorm {d} {r}x{c}"), peer: "-", bytes: set_bytes + c * d.size(), ms });
    }
    for d in [DType::F32, DType::BF16] {
        let set_bytes = 2 * r * c * d.size();
        let n = ROTATE_BYTES.div_ceil(set_bytes).max(2);
        let sets: Vec<Vec<DeviceTensor>> =
            (0..n).map(|_| vec![random(&dev, d, &[r, c], &mut rng), dev.alloc(d, &[r, c]).unwrap()]).collect();
        let ms = bench(&dev, kernels::softmax::kernel().unwrap(), &sets, &[(2, 0.088)]);
        cases.push(Case { name: format!("softmax {d} {r}x{c}"), peer: "2741 GB/s (fp32, torch.compile)", bytes: set_bytes, ms });
    }
    let (r2, c2) = (4096usize, 14336usize);
    for (name, kern) in [("swiglu", kernels::swiglu::kernel().unwrap()), ("geglu", kernels::geglu::kernel().unwrap())] {
        for d in [DType::BF16, DType::F16] {
            let set_bytes = 3 * r2 * c2 * d.size();
            let n = ROTATE_BYTES.div_ceil(set_bytes).max(2);
            let sets: Vec<Vec<DeviceTensor>> = (0..n)
                .map(|_| vec![random(&dev, d, &[r2, c2], &mut rng), random(&dev, d, &[r2, c2], &mut rng), dev.alloc(d, &[r2, c2]).unwrap()])
                .collect();
            let ms = bench(&dev, kern, &sets, &[]);
            let peer = if name == "swiglu" { "2938 GB/s (fp16, torch.compile)" } else { "-" };
            cases.push(Case { name: format!("{name} {d} {r2}x{c2}"), peer, bytes: set_bytes, ms });
        }
    }
    for (name, kern) in [("rope_neox", kernels::rope_neox::kernel().unwrap()), ("rope_gptj", kernels::rope_gptj::kernel().unwrap())] {
        let d = DType::BF16;
        let (t, hq, hk, hd) = (4096usize, 32usize, 8usize, 128usize);
        let (freq, mscale) = inv_freq(
            hd,
            500_000.0,
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192.0 },
        );
        let set_bytes = 2 * t * (hq + hk) * hd * d.size();
        let n = ROTATE_BYTES.div_ceil(set_bytes).max(2);
        let pos = HostTensor::from_i32(&[t], (0..t as i32).collect()).unwrap();
        let fr = HostTensor::from_f32(DType::F32, &[hd / 2], &freq).unwrap();
        let sets: Vec<Vec<DeviceTensor>> = (0..n)
            .map(|_| {
                vec![
                    random(&dev, d, &[t, hq, hd], &mut rng),
                    random(&dev, d, &[t, hk, hd], &mut rng),
                    dev.upload(&pos).unwrap(),
                    dev.upload(&fr).unwrap(),
                ]
            })
            .collect();
        let ms = bench(&dev, kern, &sets, &[(4, mscale)]);
        cases.push(Case { name: format!("{name} {d} {t}x({hq}+{hk})x{hd}"), peer: "-", bytes: set_bytes + t * 4, ms });
    }

    // Every block size of the rowwise kernels on the same rows, to check the chooser.
    println!("rowwise specializations, bf16 {r}x{c} (the launcher's choice marked *):");
    for k in [kernels::rmsnorm::kernel().unwrap(), kernels::softmax::kernel().unwrap()] {
        let d = DType::BF16;
        let x: Vec<DeviceTensor> = (0..4).map(|_| random(&dev, d, &[r, c], &mut rng)).collect();
        let w = random(&dev, d, &[c], &mut rng);
        let out = dev.alloc(d, &[r, c]).unwrap();
        let chosen = rocmforge::runtime::plan::choose_row_spec(k, Some(d), dev.limits().warp_size, c as u64);
        for spec in k.specs(dev.limits().warp_size).into_iter().filter(|s| s.dtype == Some(d)) {
            let plans: Vec<_> = (0..4)
                .map(|i| {
                    let args: Vec<Arg<'_>> = if k.name == "softmax" {
                        vec![Arg::Tensor(&x[i]), Arg::Tensor(&out), Arg::F32(0.088)]
                    } else {
                        vec![Arg::Tensor(&x[i]), Arg::Tensor(&w), Arg::Tensor(&out), Arg::F32(1e-5)]
                    };
                    rocmforge::runtime::plan_spec(k, dev.limits(), &args, Some(spec)).unwrap()
                })
                .collect();
            let ms = time_ms(&dev, |i| dev.launch(k, &plans[i % 4]).unwrap());
            let gbs = (2 * r * c * d.size()) as f64 / (ms * 1e-3) / 1e9;
            let mark = if Some(spec) == chosen { "*" } else { " " };
            println!(
                "  {mark} {:<28} {:>8.1} us {:>6.0} GB/s {:>5.2} of copy",
                rocmforge::dsl::symbol_name(&k.name, &spec),
                ms * 1e3,
                gbs,
                gbs / copy_gbs
            );
        }
    }
    println!();
    println!(
        "{:<34} {:>10} {:>10} {:>9} {:>8} {:>10} {:>8}  peer",
        "kernel", "MB moved", "median us", "GB/s", "of copy", "copy us", "vs copy"
    );
    for c in &cases {
        let gbs = c.bytes as f64 / (c.ms * 1e-3) / 1e9;
        let same = same_size_copy_us(&dev, c.bytes);
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>9.0} {:>8.2} {:>10.1} {:>8.2}  {}",
            c.name,
            c.bytes as f64 / 1e6,
            c.ms * 1e3,
            gbs,
            gbs / copy_gbs,
            same,
            same / (c.ms * 1e3),
            c.peer
        );
    }
    println!(
        "\n(same-size copy: a device-to-device copy moving the kernel's bytes, half read and half written, \
         timed the same way: the fastest any kernel of that traffic can be; `vs copy` = its time / the kernel's)"
    );
}
