//! Timing helpers shared by the benchmarks.

#![allow(dead_code, reason = "each benchmark uses a subset")]

use std::sync::Arc;

use rocmforge::models::sampling::Rng;
use rocmforge::runtime::cuda::{CudaDevice, DeviceTensor};
use rocmforge::runtime::{DType, HostTensor};

pub const WARMUP: usize = 10;
pub const ITERS: usize = 200;
pub const ROTATE_BYTES: usize = 512 << 20;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median device time of `f(i)` over ITERS runs after WARMUP. Every run's start event,
/// launch and end event are enqueued back to back without waiting, so the GPU runs them
/// in sequence while the host works ahead: an interval holds the kernel, not the host's
/// launch latency (the method of triton's `do_bench`). Callers plan outside `f`.
pub fn time_ms(dev: &CudaDevice, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..WARMUP {
        f(i);
    }
    dev.synchronize().unwrap();
    let events: Vec<_> = (0..ITERS).map(|_| (dev.event().unwrap(), dev.event().unwrap())).collect();
    for (i, (a, b)) in events.iter().enumerate() {
        dev.record(a).unwrap();
        f(i);
        dev.record(b).unwrap();
    }
    dev.synchronize().unwrap();
    median(events.iter().map(|(a, b)| f64::from(a.elapsed_ms(b).unwrap())).collect())
}

pub fn random(dev: &Arc<CudaDevice>, d: DType, shape: &[usize], rng: &mut Rng) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    dev.upload(&HostTensor::from_f32(d, shape, &v).unwrap()).unwrap()
}

/// Median microseconds of a device-to-device copy moving `bytes` in all (half read, half
/// written), over 4 rotating buffer pairs: the floor for any kernel of that traffic,
/// launch ramp and tail included.
pub fn same_size_copy_us(dev: &Arc<CudaDevice>, bytes: usize) -> f64 {
    let n = (bytes / 2).div_ceil(4);
    let src: Vec<DeviceTensor> = (0..4).map(|_| dev.alloc(DType::F32, &[n]).unwrap()).collect();
    let mut dst: Vec<DeviceTensor> = (0..4).map(|_| dev.alloc(DType::F32, &[n]).unwrap()).collect();
    time_ms(dev, |i| dev.copy(&src[i % 4], &mut dst[i % 4]).unwrap()) * 1e3
}

/// Device-to-device copy bandwidth (bytes read + written per second, GB/s) of 1 GiB,
/// after about a second of copies to bring the clocks up.
pub fn copy_bandwidth(dev: &Arc<CudaDevice>, rng: &mut Rng) -> f64 {
    let copy_bytes = 1usize << 30;
    let src = random(dev, DType::F32, &[copy_bytes / 4], rng);
    let mut dst = dev.alloc(DType::F32, &[copy_bytes / 4]).unwrap();
    let t = std::time::Instant::now();
    while t.elapsed().as_secs_f64() < 1.0 {
        dev.copy(&src, &mut dst).unwrap();
        dev.synchronize().unwrap();
    }
    let copy_ms = time_ms(dev, |_| dev.copy(&src, &mut dst).unwrap());
    let copy_gbs = 2.0 * copy_bytes as f64 / (copy_ms * 1e-3) / 1e9;
    println!("device-to-device copy, read + written: {copy_gbs:.0} GB/s (1 GiB, median of {ITERS})\n");
    copy_gbs
}
