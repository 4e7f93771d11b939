//! NVIDIA backend through cudarc: the driver and NVRTC are loaded at run time.
//!
//! Kernels compile at first use with NVRTC (the generated HIP builds as CUDA through
//! the portability header) and the CUBIN for the exact arch is cached on disk, keyed by a hash of the
//! source, the arch and the NVRTC version, written atomically (temp file, rename).
//! Each specialization is its own module (compiled in parallel by `prepare`, or alone
//! at its first launch); modules and loaded functions are cached per device in
//! [`OnceMap`]s, whose lock is never held while compiling or loading.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{result as cu, sys, CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;
use rocmforge_dsl::codegen::render_source;
use rocmforge_dsl::interp::HostTensor;
use rocmforge_dsl::{DType, Kernel, Spec};

use crate::cache::OnceMap;
use crate::diskcache::{cache_dir, entry, write_atomic};
pub use cudarc::driver::CudaEvent;

use crate::engine::{EngineModule, EnginePlan, GemmPlan};
use crate::plan::{DeviceLimits, LaunchError, LaunchPlan, TensorArg};

/// A failure in the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A driver call failed.
    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        /// The call.
        call: &'static str,
        /// The driver's error.
        source: DriverError,
    },
    /// No usable NVIDIA device or driver.
    #[error("no NVIDIA GPU available ({0}); check the driver with nvidia-smi, or choose the cpu device")]
    NoDevice(String),
    /// An allocation did not fit.
    #[error("out of GPU memory: asked for {requested} bytes, {free} of {total} bytes free")]
    OutOfMemory {
        /// Bytes requested.
        requested: usize,
        /// Bytes free when it failed.
        free: usize,
        /// Device memory.
        total: usize,
    },
    /// NVRTC rejected the generated source.
    #[error("NVRTC failed to compile kernel `{kernel}` for {arch}: {message}\n{log}")]
    Compile {
        /// Kernel name.
        kernel: String,
        /// Target arch.
        arch: String,
        /// The error.
        message: String,
        /// The compiler log.
        log: String,
    },
    /// The launch was refused before running.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The vendor BLAS failed to load or to run.
    #[error("cuBLAS: {0}")]
    Blas(String),
    /// A view outside its tensor, or of another size.
    #[error("view of {shape:?} at element {offset} does not fit a tensor of {elems} elements")]
    View {
        /// First element of the view.
        offset: usize,
        /// The view's shape.
        shape: Vec<usize>,
        /// Elements of the tensor.
        elems: usize,
    },
    /// A view read as a dtype of another element size than its tensor's.
    #[error("a {tensor} tensor cannot be viewed as {view}: the element sizes differ (view it as a dtype of the same width)")]
    ViewDType {
        /// The tensor's dtype.
        tensor: DType,
        /// The dtype asked for.
        view: DType,
    },
    /// Host and device sizes disagree.
    #[error("copy of {what}: {host} host bytes but {device} device bytes")]
    SizeMismatch {
        /// What was copied.
        what: &'static str,
        /// Host bytes.
        host: usize,
        /// Device bytes.
        device: usize,
    },
}

/// cuBLAS workspace bytes (NVIDIA recommends 32 MiB on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

fn drv(call: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |source| CudaError::Driver { call, source }
}

/// How the workgroups of a launch are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping {
    /// Independently.
    None,
    /// Clusters of this many workgroups along z (sm_90; 1 is none).
    ClusterZ(u32),
    /// Every workgroup resident at once, or the driver refuses the launch (grid barriers).
    Cooperative,
}

/// One NVIDIA GPU with its context, default stream and module cache.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    arch: String,
    limits: DeviceLimits,
    total_mem: usize,
    compute_units: u32,
    ordinal: usize,
    /// Loaded functions by symbol.
    functions: OnceMap<Result<CudaFunction, String>>,
    /// One module per specialization (keyed by its symbol); a rowwise module holds the
    /// cached-row kernel and its `_wide` sibling.
    modules: OnceMap<Result<Arc<CudaModule>, String>>,
    compile_nanos: AtomicU64,
    compiles: AtomicU64,
    cache_hits: AtomicU64,
    /// Functions whose dynamic shared memory limit was raised, by symbol.
    smem_opt_in: OnceMap<Result<(), String>>,
    /// The engine kernels' module (row gather, argmax, top-k), compiled on first use.
    engine: OnceMap<Result<Arc<CudaModule>, String>>,
    /// The cuBLAS workspace (BLAS_WORKSPACE bytes), allocated with the handle.
    blas_workspace: std::sync::OnceLock<Result<sys::CUdeviceptr, String>>,
    /// The cuBLAS handle, created on first use (libcublas is loaded then).
    blas: std::sync::OnceLock<Result<cudarc::cublas::CudaBlas, String>>,
    /// Zeroed scratch for kernels that ask for it (split-KV attention), grown on demand.
    /// Launches are ordered on the one stream, so one buffer serves them all.
    workspace: std::sync::Mutex<Workspace>,
}

/// A device allocation owned by its [`CudaDevice`] (freed in the device's Drop).
#[derive(Debug, Default)]
struct Workspace {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice").field("name", &self.name).field("arch", &self.arch).field("limits", &self.limits).finish()
    }
}

impl CudaDevice {
    /// NVIDIA GPUs present; an error when the driver library cannot be loaded.
    pub fn count() -> Result<usize, CudaError> {
        // cudarc's dynamic loading panics when libcuda is absent: look for it first (so
        // no panic message reaches the user), and keep the catch as a backstop.
        if !library_present(Vendor::Driver) {
            return Err(CudaError::NoDevice(NO_DRIVER.into()));
        }
        let count = std::panic::catch_unwind(CudaContext::device_count)
            .map_err(|_| CudaError::NoDevice(NO_DRIVER.into()))?
            .map_err(|e| CudaError::NoDevice(format!("cuDeviceGetCount: {e}")))?;
        Ok(count.max(0) as usize)
    }

    /// Opens GPU `ordinal`.
    pub fn open(ordinal: usize) -> Result<Arc<Self>, CudaError> {
        let count = Self::count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice(format!("cuda:{ordinal} requested, {count} device(s) present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        let attr = |a| ctx.attribute(a).map_err(drv("cuDeviceGetAttribute"));
        use sys::CUdevice_attribute as A;
        let limits = DeviceLimits {
            warp_size: attr(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE)? as u32,
            max_threads_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)? as u32,
            max_grid: [
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)? as u32,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)? as u32,
                attr(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)? as u32,
            ],
            // With the opt-in (cuFuncSetAttribute at launch) a workgroup may use this much.
            max_shared_bytes: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32,
            compute_units: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            mma: false,
            mfma: false,
            wmma: false,
            clusters: false,
            wgmma: false,
        };
        let (major, minor) = ctx.compute_capability().map_err(drv("cuDeviceGetAttribute"))?;
        // wgmma exists on sm_90a code only, which runs on compute capability 9.0 alone
        // (the kernels are compiled for this device's arch; see `nvrtc_arch`).
        let wgmma = (major, minor) == (9, 0) && std::env::var("ROCMFORGE_WGMMA").as_deref() != Ok("0");
        let limits = DeviceLimits { mma: major >= 8, clusters: major >= 9, wgmma, ..limits };
        let name = ctx.name().map_err(drv("cuDeviceGetName"))?;
        let total_mem = ctx.total_mem().map_err(drv("cuDeviceTotalMem"))?;
        let compute_units = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        // An owned stream, not the legacy default one: graph capture needs it, and every
        // copy and memset below is queued on it, so all device work keeps one order.
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        Ok(Arc::new(CudaDevice {
            ctx,
            stream,
            name,
            arch: format!("sm_{major}{minor}"),
            limits,
            total_mem,
            compute_units,
            ordinal,
            functions: OnceMap::new(),
            modules: OnceMap::new(),
            compile_nanos: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            smem_opt_in: OnceMap::new(),
            engine: OnceMap::new(),
            blas: std::sync::OnceLock::new(),
            blas_workspace: std::sync::OnceLock::new(),
            workspace: std::sync::Mutex::new(Workspace::default()),
        }))
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The CUDA ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// `sm_XY`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Queues `f` on the device's stream, its workgroups grouped as `group` says.
    ///
    /// # Safety
    /// The context is current on this thread; `f` is a function of it; `params` holds one pointer per kernel
    /// parameter, each to a value of the width the kernel declares, and every device
    /// pointer among them is live until the kernel has run; grid and block are within
    /// the device limits; with [`Grouping::ClusterZ`] the device supports clusters (sm_90+)
    /// and `grid[2]` is a multiple of the cluster size.
    unsafe fn launch_raw(
        &self,
        f: &CudaFunction,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        group: Grouping,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<(), CudaError> {
        let attr_of = |attr: &mut sys::CUlaunchAttribute| match group {
            Grouping::ClusterZ(z) if z > 1 => {
                attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
                attr.value.clusterDim.x = 1;
                attr.value.clusterDim.y = 1;
                attr.value.clusterDim.z = z;
                true
            }
            Grouping::Cooperative => {
                attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                attr.value.cooperative = 1;
                true
            }
            _ => false,
        };
        // SAFETY: the attribute value is a plain union of integers; only the member the
        // id names is written (by `attr_of`) and read (by the driver).
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        if attr_of(&mut attr) {
            let config = sys::CUlaunchConfig {
                gridDimX: grid[0],
                gridDimY: grid[1],
                gridDimZ: grid[2],
                blockDimX: block[0],
                blockDimY: block[1],
                blockDimZ: block[2],
                sharedMemBytes: shared,
                hStream: self.stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: forwarded from this function's contract; `config` and `attr` live
            // across the call, which copies them.
            return unsafe { sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) }
                .result()
                .map_err(drv("cuLaunchKernelEx"));
        }
        // SAFETY: forwarded from this function's contract.
        unsafe {
            cu::launch_kernel(
                f.cu_function(),
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                shared,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(drv("cuLaunchKernel"))
    }
    /// Launch limits.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }
    /// Streaming multiprocessors.
    pub fn compute_units(&self) -> u32 {
        self.compute_units
    }
    /// Total device memory, bytes.
    pub fn total_memory(&self) -> usize {
        self.total_mem
    }
    /// Free and total device memory, bytes.
    pub fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    /// Seconds spent getting modules ready (NVRTC or the disk cache, plus loading),
    /// modules compiled, and modules read from the disk cache, so far.
    pub fn compile_stats(&self) -> (f64, u64, u64) {
        (
            self.compile_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            self.compiles.load(Ordering::Relaxed),
            self.cache_hits.load(Ordering::Relaxed),
        )
    }

    /// Allocates an uninitialized tensor.
    pub fn alloc(self: &Arc<Self>, dtype: DType, shape: &[usize]) -> Result<DeviceTensor, CudaError> {
        let n = crate::plan::byte_size(dtype, shape);
        let Some(bytes) = n else {
            return Err(CudaError::OutOfMemory { requested: usize::MAX, free: 0, total: self.total_mem });
        };
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: the context is current on this thread; the pointer is owned by the
        // returned DeviceTensor and freed once in its Drop.
        let ptr = match unsafe { cu::malloc_sync(bytes.max(1)) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.memory_info().unwrap_or((0, self.total_mem));
                return Err(CudaError::OutOfMemory { requested: bytes, free, total });
            }
            Err(e) => return Err(CudaError::Driver { call: "cuMemAlloc", source: e }),
        };
        Ok(DeviceTensor { dev: Arc::clone(self), ptr, bytes, dtype, shape: shape.to_vec() })
    }

    /// Copies a host tensor to a new device tensor.
    pub fn upload(self: &Arc<Self>, t: &HostTensor) -> Result<DeviceTensor, CudaError> {
        self.upload_bytes(t.dtype(), &t.shape, &t.to_bytes())
    }

    /// Copies a device tensor back to the host (waits for pending work first).
    pub fn download(&self, d: &DeviceTensor) -> Result<HostTensor, CudaError> {
        let bytes = self.read_bytes(d)?;
        HostTensor::from_bytes(d.dtype, &d.shape, &bytes).ok_or(CudaError::SizeMismatch {
            what: "download",
            host: bytes.len(),
            device: d.bytes,
        })
    }

    /// Fills a tensor with all-ones bytes: NaN in f32, f16 and bf16.
    pub fn poison(&self, d: &mut DeviceTensor) -> Result<(), CudaError> {
        self.fill(d, 0xff)
    }

    /// Allocates a tensor of zero bytes (a memset in stream order): counters that a
    /// kernel protocol needs at zero before its first launch.
    pub fn zeros(self: &Arc<Self>, dtype: DType, shape: &[usize]) -> Result<DeviceTensor, CudaError> {
        let mut d = self.alloc(dtype, shape)?;
        self.fill(&mut d, 0)?;
        Ok(d)
    }

    fn fill(&self, d: &mut DeviceTensor, byte: u8) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: writes exactly the allocation's bytes, in stream order.
        unsafe { cu::memset_d8_async(d.ptr, byte, d.bytes, self.stream.cu_stream()) }.map_err(drv("cuMemsetD8Async"))
    }

    /// Device-to-device copy of `src` into `dst` (same byte size), on the stream.
    pub fn copy(&self, src: &DeviceTensor, dst: &mut DeviceTensor) -> Result<(), CudaError> {
        let shape = dst.shape.clone();
        self.copy_view(src, &mut dst.view_mut(0, &shape)?)
    }

    /// Device-to-device copy of a window into a writable window of the same byte size, on
    /// the stream (after the work queued before it).
    pub fn copy_view(&self, src: &dyn TensorArg, dst: &mut DeviceViewMut<'_>) -> Result<(), CudaError> {
        let n = crate::plan::byte_size(src.dtype(), src.shape()).unwrap_or(usize::MAX);
        let m = crate::plan::byte_size(dst.dtype, &dst.shape).unwrap_or(usize::MAX);
        if n != m {
            return Err(CudaError::SizeMismatch { what: "device copy", host: n, device: m });
        }
        if n == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: both windows were bounds-checked against live allocations of this device
        // when made and hold `n` bytes; `dst` borrows its tensor mutably, so `src` is not
        // a window of the same tensor.
        unsafe { cu::memcpy_dtod_async(dst.ptr, src.device_ptr(), n, self.stream.cu_stream()) }.map_err(drv("cuMemcpyDtoDAsync"))
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// A timing event.
    pub fn event(&self) -> Result<CudaEvent, CudaError> {
        self.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))
    }

    /// Records `e` on the device's stream.
    pub fn record(&self, e: &CudaEvent) -> Result<(), CudaError> {
        e.record(&self.stream).map_err(drv("cuEventRecord"))
    }

    /// Compiles (or reads from the disk cache) and loads every specialization of the
    /// given kernels now, on all cores, instead of one by one at first launch.
    pub fn prepare(&self, kernels: &[&Kernel]) -> Result<(), CudaError> {
        let jobs: Vec<(&Kernel, Spec)> =
            kernels.iter().flat_map(|k| k.specs(self.limits.warp_size).into_iter().map(move |s| (*k, s))).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4).min(jobs.len().max(1));
        let errors: Vec<CudaError> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut errs = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((k, spec)) = jobs.get(i) else { break };
                            if let Err(e) = self.module(k, spec) {
                                errs.push(e);
                            }
                        }
                        errs
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// The loaded function `symbol` of `spec`'s module; a map lookup once it is loaded,
    /// since launches call this every time.
    fn function(&self, kernel: &Kernel, spec: &Spec, symbol: &str) -> Result<CudaFunction, CudaError> {
        // Loading happens outside the map's lock; concurrent callers for the same symbol
        // wait on its cell only.
        let f = self.functions.get_or_init(symbol, || {
            let module = self.module(kernel, spec).map_err(|e| e.to_string())?;
            module.load_function(symbol).map_err(|e| format!("cuModuleGetFunction({symbol}): {e:?}"))
        });
        f.clone().map_err(|message| CudaError::Compile {
            kernel: kernel.name.clone(),
            arch: self.arch.clone(),
            message,
            log: String::new(),
        })
    }

    /// The module of `spec`: compiled (or read from the disk cache) and loaded once.
    fn module(&self, kernel: &Kernel, spec: &Spec) -> Result<Arc<CudaModule>, CudaError> {
        let base = rocmforge_dsl::symbol_name(&kernel.name, spec);
        // Compiling happens outside the map's lock.
        let m = self.modules.get_or_init(&base, || {
            let t = Instant::now();
            let m = self.build_module(kernel, spec, &base).map_err(|e| e.to_string());
            self.compile_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            m
        });
        m.map_err(|message| CudaError::Compile { kernel: kernel.name.clone(), arch: self.arch.clone(), message, log: String::new() })
    }

    fn build_module(&self, kernel: &Kernel, spec: &Spec, symbol: &str) -> Result<Arc<CudaModule>, CudaError> {
        let src = render_source(kernel, &[*spec]).map_err(|e| CudaError::Compile {
            kernel: kernel.name.clone(),
            arch: self.arch.clone(),
            message: e.to_string(),
            log: String::new(),
        })?;
        self.load_source(symbol, &src).map_err(|e| match e {
            CudaError::Compile { message, log, .. } => {
                CudaError::Compile { kernel: kernel.name.clone(), arch: self.arch.clone(), message, log }
            }
            other => other,
        })
    }

    /// A module from source: the CUBIN from the disk cache, or NVRTC (then cached).
    fn load_source(&self, symbol: &str, src: &str) -> Result<Arc<CudaModule>, CudaError> {
        // cudarc panics when libnvrtc cannot be loaded (a driver without the toolkit).
        if !library_present(Vendor::Nvrtc) {
            return Err(CudaError::Compile {
                kernel: symbol.to_string(),
                arch: self.arch.clone(),
                message: "NVRTC (libnvrtc.so) could not be loaded: install the CUDA toolkit's NVRTC (e.g. the cuda-nvrtc package) \
                          and put its lib directory on LD_LIBRARY_PATH"
                    .into(),
                log: String::new(),
            });
        }
        let nvrtc_version = nvrtc_version();
        let dir = cache_dir();
        // The target compiled for is also the cache key, so a CUBIN built for another
        // target is never read back for this one.
        let target = nvrtc_arch(&self.arch);
        let path = dir.as_ref().map(|d| entry(d, symbol, &target, src, &nvrtc_version, "cubin"));
        let cached = path.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| !b.is_empty());
        let cubin = if let Some(cubin) = cached {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            cubin
        } else {
            let t = Instant::now();
            let cubin = compile_cubin(src, &target).map_err(|(message, log)| CudaError::Compile {
                kernel: symbol.to_string(),
                arch: self.arch.clone(),
                message,
                log,
            })?;
            tracing::debug!("NVRTC compiled `{symbol}` in {:.3} s", t.elapsed().as_secs_f64());
            self.compiles.fetch_add(1, Ordering::Relaxed);
            if let (Some(dir), Some(path)) = (dir, path) {
                if let Err(e) = write_atomic(&dir, &path, &cubin) {
                    tracing::warn!("could not write the kernel cache {}: {e}", path.display());
                }
            }
            cubin
        };
        // A CUBIN for this exact arch: the driver loads it without a JIT step (PTX would be
        // JIT-compiled by the driver at load, serialized per context: 17 s for the 81
        // standard specializations on the H100, against parallel NVRTC threads here).
        let ptx = Ptx::from_binary(cubin);
        self.ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))
    }

    /// Launches a planned kernel on the device's stream. The plan must come from this
    /// kernel's launcher with this device's limits; the arguments' tensors must stay
    /// alive until the stream has run it (see [`CudaDevice::synchronize`]).
    pub fn launch(&self, kernel: &Kernel, plan: &LaunchPlan) -> Result<(), CudaError> {
        if plan.kernel != kernel.name {
            return Err(LaunchError::Kernel(format!("plan for `{}` launched as `{}`", plan.kernel, kernel.name)).into());
        }
        let f = self.function(kernel, &plan.spec, &plan.symbol)?;
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let mut storage = plan.param_slots();
        // Held until the launch is queued (the next launch that grows the buffer waits);
        // taken only by launches that use the workspace.
        let mut ws_guard = None;
        if plan.workspace_bytes > 0 {
            let ws = ws_guard.insert(self.workspace.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            let need = usize::try_from(plan.workspace_bytes).map_err(|_| CudaError::OutOfMemory {
                requested: usize::MAX,
                free: 0,
                total: self.total_mem,
            })?;
            if ws.bytes < need {
                self.grow_workspace(ws, need)?;
            }
            if let Some(last) = storage.last_mut() {
                *last = ws.ptr.to_ne_bytes();
            }
        }
        if plan.shared_bytes > 48 * 1024 {
            // Once per function (a symbol's shared size is fixed by its spec): a driver
            // call per launch would cost host time on short kernels.
            let set = self.smem_opt_in.get_or_init(&plan.symbol, || {
                // SAFETY: `f` is a loaded function of this context; the value is within
                // the device's opt-in limit (checked by the plan).
                unsafe {
                    cu::function::set_function_attribute(
                        f.cu_function(),
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        plan.shared_bytes as i32,
                    )
                }
                .map_err(|e| format!("cuFuncSetAttribute: {e:?}"))
            });
            set.map_err(|message| CudaError::Compile {
                kernel: kernel.name.clone(),
                arch: self.arch.clone(),
                message,
                log: String::new(),
            })?;
        }
        let mut params: Vec<*mut std::ffi::c_void> = storage.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        // SAFETY: the plan was checked against this kernel's declaration: one parameter
        // slot per kernel parameter in order, each 8-byte slot holding the value in the
        // width the generated signature declares (pointers and long long: 8 bytes;
        // float, int, unsigned: the first 4). Grid and block are within the device
        // limits. The pointers are live device allocations owned by the caller. The
        // context was bound above.
        unsafe { self.launch_raw(&f, plan.grid, plan.block, plan.shared_bytes, Grouping::ClusterZ(plan.cluster_z), &mut params) }
    }

    /// Copies host bytes into `dst` starting at byte `offset`, in stream order (after the
    /// work queued before it). The host buffer may be reused on return: a copy from
    /// pageable memory is staged before the call returns.
    pub fn write(&self, dst: &mut DeviceTensor, offset: usize, bytes: &[u8]) -> Result<(), CudaError> {
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= dst.bytes);
        if end.is_none() {
            return Err(CudaError::SizeMismatch { what: "write", host: offset.saturating_add(bytes.len()), device: dst.bytes });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: `offset + bytes.len() <= dst.bytes` (checked above), so the copy stays
        // inside the allocation; it is queued on the stream, so kernels queued earlier
        // read the old contents and later ones the new.
        unsafe { cu::memcpy_htod_async(dst.ptr + offset as u64, bytes, self.stream.cu_stream()) }.map_err(drv("cuMemcpyHtoDAsync"))
    }

    /// Copies raw bytes (the tensor's storage dtype, little-endian) to a new tensor.
    pub fn upload_bytes(self: &Arc<Self>, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<DeviceTensor, CudaError> {
        let mut d = self.alloc(dtype, shape)?;
        if bytes.len() != d.bytes {
            return Err(CudaError::SizeMismatch { what: "upload", host: bytes.len(), device: d.bytes });
        }
        self.write(&mut d, 0, bytes)?;
        Ok(d)
    }

    /// Copies `d`'s bytes back to the host.
    pub fn read_bytes(&self, d: &dyn TensorArg) -> Result<Vec<u8>, CudaError> {
        let n = crate::plan::byte_size(d.dtype(), d.shape()).unwrap_or(0);
        let mut bytes = vec![0u8; n];
        if n > 0 {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            // SAFETY: a `TensorArg` of this device describes `n` bytes of live device
            // memory (a tensor or a checked view of one); `bytes` has `n` bytes and is
            // not touched until the stream has drained below.
            unsafe { cu::memcpy_dtoh_async(&mut bytes, d.device_ptr(), self.stream.cu_stream()) }.map_err(drv("cuMemcpyDtoHAsync"))?;
        }
        self.synchronize()?;
        Ok(bytes)
    }

    fn blas(&self) -> Result<&cudarc::cublas::CudaBlas, CudaError> {
        let b = self.blas.get_or_init(|| {
            // cudarc panics when libcublas cannot be loaded: report it as an error.
            if !library_present(Vendor::Blas) {
                return Err(NO_CUBLAS.to_string());
            }
            let stream = Arc::clone(&self.stream);
            let blas = std::panic::catch_unwind(move || cudarc::cublas::CudaBlas::new(stream))
                .map_err(|_| NO_CUBLAS.to_string())?
                .map_err(|e| format!("cublasCreate: {e:?}"))?;
            // A workspace of our own, so cuBLAS never allocates inside a graph capture.
            let ws = self.blas_workspace.get_or_init(|| {
                // SAFETY: the context is current (CudaBlas::new bound it); the pointer is
                // owned by the device and freed in its Drop.
                unsafe { cu::malloc_sync(BLAS_WORKSPACE) }.map_err(|e| format!("cuMemAlloc (cuBLAS workspace): {e}"))
            });
            let ws = ws.clone()?;
            // SAFETY: `ws` holds BLAS_WORKSPACE bytes of device memory that outlive the
            // handle (both are freed with the device, the handle first).
            let st = unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ws as *mut std::ffi::c_void, BLAS_WORKSPACE) };
            if st != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(format!("cublasSetWorkspace: {st:?}"));
            }
            Ok(blas)
        });
        b.as_ref().map_err(|e| CudaError::Blas(e.clone()))
    }

    /// Runs a planned matrix product (`out = x @ w^T`) on the device's stream through
    /// cuBLAS, f32 accumulation. The plan's tensors must stay alive until the stream ran it.
    pub fn gemm(&self, p: &GemmPlan) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{cublasComputeType_t as C, cublasGemmAlgo_t, cublasOperation_t as Op, cudaDataType as T};
        let ty = |d: DType| match d {
            DType::F16 => T::CUDA_R_16F,
            DType::BF16 => T::CUDA_R_16BF,
            _ => T::CUDA_R_32F,
        };
        let blas = self.blas()?;
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major out[m, n] = x[m, k] w[n, k]^T is column-major out^T (n x m) =
        // w^T... as cuBLAS sees it: A = w (k x n column-major, transposed), B = x (k x m).
        // SAFETY: the plan checked shapes and dtypes: w holds n*k, x m*k and out m*n
        // elements of the given types at live device addresses; alpha and beta are f32
        // as CUBLAS_COMPUTE_32F requires; the handle is bound to this device's stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                Op::CUBLAS_OP_T,
                Op::CUBLAS_OP_N,
                p.n,
                p.m,
                p.k,
                (&alpha as *const f32).cast(),
                p.w as *const std::ffi::c_void,
                ty(p.dtype),
                p.k,
                p.x as *const std::ffi::c_void,
                ty(p.dtype),
                p.k,
                (&beta as *const f32).cast(),
                p.out as *mut std::ffi::c_void,
                ty(p.out_dtype),
                p.n,
                C::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Blas(format!("cublasGemmEx (m {}, n {}, k {}): {e:?}", p.m, p.n, p.k)))
    }

    /// Records the work `f` queues on the device's stream into a CUDA graph instead of
    /// running it; [`DeviceGraph::launch`] replays it. Everything `f` launches must already
    /// be loaded and the workspace large enough (run the same work once uncaptured first):
    /// capture fails on a synchronizing call. The graph keeps the arguments' addresses,
    /// so the tensors it uses must outlive it; their contents are read at each replay.
    /// The graph is uploaded to the device before it is returned (in stream order).
    pub fn capture<E: From<CudaError>>(&self, f: impl FnOnce() -> Result<(), E>) -> Result<DeviceGraph, E> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| E::from(CudaError::Driver { call: "cuStreamBeginCapture", source: e }))?;
        let r = f();
        let g = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        r?;
        match g {
            // Uploaded now, so that its first replay (inside whatever is timed) does not
            // set it up on the device.
            Ok(Some(graph)) => match graph.upload() {
                Ok(()) => Ok(DeviceGraph { graph }),
                Err(e) => Err(E::from(CudaError::Driver { call: "cuGraphUpload", source: e })),
            },
            Ok(None) => Err(E::from(CudaError::NoDevice("graph capture recorded nothing".into()))),
            Err(e) => Err(E::from(CudaError::Driver { call: "cuStreamEndCapture", source: e })),
        }
    }

    /// Compiles (or reads from the disk cache) and loads the engine `modules` now, each
    /// on its own thread.
    ///
    /// A thread that panicked (a compiler library's bug) is that module's error, not a
    /// silent success that would compile it again at its first launch.
    pub fn prepare_engine(&self, modules: &[EngineModule]) -> Result<(), CudaError> {
        let errors: Vec<CudaError> = std::thread::scope(|s| {
            let handles: Vec<_> = modules.iter().map(|&m| (m, s.spawn(move || self.module_of(m).err()))).collect();
            handles
                .into_iter()
                .filter_map(|(m, h)| {
                    h.join().unwrap_or_else(|panic| {
                        Some(CudaError::Compile {
                            kernel: m.key(),
                            arch: self.arch.clone(),
                            message: format!("the thread compiling it panicked ({})", panic_text(panic.as_ref())),
                            log: String::new(),
                        })
                    })
                })
                .collect()
        });
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// The module of an engine translation unit, compiled (or read from the disk cache)
    /// and loaded on first use.
    fn module_of(&self, module: EngineModule) -> Result<Arc<CudaModule>, CudaError> {
        let key = module.key();
        let m = self.engine.get_or_init(&key, || {
            let t = Instant::now();
            let src = match module {
                EngineModule::Engine(dtype, part) => rocmforge_dsl::codegen::engine_source_for(dtype, part),
                EngineModule::DecodeStep { dtype, dpl, group } => rocmforge_dsl::codegen::decode_step_source(dtype, dpl, group),
            };
            let m = src.map_err(|e| e.to_string()).and_then(|src| self.load_source(&key, &src).map_err(|e| e.to_string()));
            self.compile_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            m
        });
        m.map_err(|message| CudaError::Compile { kernel: key.clone(), arch: self.arch.clone(), message, log: String::new() })
    }

    /// Launches a planned engine kernel on the device's stream.
    pub fn launch_engine(&self, plan: &EnginePlan) -> Result<(), CudaError> {
        let module = self.module_of(plan.module)?;
        // The decode step's modules define symbols of the same name per variant.
        let fkey = match plan.module {
            EngineModule::Engine(..) => plan.symbol.clone(),
            m => format!("{}/{}", m.key(), plan.symbol),
        };
        let f = self
            .functions
            .get_or_init(&fkey, || module.load_function(&plan.symbol).map_err(|e| format!("cuModuleGetFunction({}): {e:?}", plan.symbol)));
        let f = f.clone().map_err(|message| CudaError::Compile {
            kernel: "engine".into(),
            arch: self.arch.clone(),
            message,
            log: String::new(),
        })?;
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let mut storage = plan.param_slots();
        let mut params: Vec<*mut std::ffi::c_void> = storage.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let group = if plan.cooperative { Grouping::Cooperative } else { Grouping::None };
        // SAFETY: the context is bound above. Engine plans (crate::engine) check every
        // tensor's dtype and shape against the kernel's signature in
        // templates/engine.hip.tera or templates/decode_step.hip.tera and pass one slot
        // per parameter in its declared width; grid and block are within the device
        // limits; a cooperative plan's grid is at most one workgroup per multiprocessor
        // times what the kernel's launch bounds allow, and the driver refuses it rather
        // than launch workgroups that cannot all be resident.
        unsafe { self.launch_raw(&f, plan.grid, plan.block, 0, group, &mut params) }
    }

    /// Replaces the workspace with a zeroed one of at least `need` bytes.
    fn grow_workspace(&self, ws: &mut Workspace, need: usize) -> Result<(), CudaError> {
        // Queued launches may still use the old buffer.
        self.synchronize()?;
        if ws.bytes > 0 {
            // SAFETY: `ws.ptr` came from cuMemAlloc below and is freed once, here, after
            // the stream drained; it is replaced before the lock is released.
            unsafe { cu::free_sync(ws.ptr) }.map_err(drv("cuMemFree"))?;
            *ws = Workspace::default();
        }
        let bytes = need.next_power_of_two();
        // SAFETY: the context is current; the pointer is owned by the device's workspace
        // and freed in `grow_workspace` or the device's Drop.
        let ptr = match unsafe { cu::malloc_sync(bytes) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.memory_info().unwrap_or((0, self.total_mem));
                return Err(CudaError::OutOfMemory { requested: bytes, free, total });
            }
            Err(e) => return Err(CudaError::Driver { call: "cuMemAlloc", source: e }),
        };
        *ws = Workspace { ptr, bytes };
        // SAFETY: writes exactly the new allocation's bytes, before any launch queued
        // after this one reads it.
        unsafe { cu::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }.map_err(drv("cuMemsetD8Async"))
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // The handle goes first (it uses the workspace), then the workspace.
        let _ = self.stream.synchronize();
        drop(self.blas.take());
        if let Some(Ok(ptr)) = self.blas_workspace.take() {
            let _ = self.ctx.bind_to_thread();
            // SAFETY: allocated once in `blas`, owned only by this device, no longer used
            // by the (dropped) handle; freed exactly once, here.
            if let Err(e) = unsafe { cu::free_sync(ptr) } {
                tracing::error!("cuMemFree (cuBLAS workspace) failed: {e}");
            }
        }
        let ws = self.workspace.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ws.bytes > 0 {
            let _ = self.stream.synchronize();
            let _ = self.ctx.bind_to_thread();
            // SAFETY: the workspace pointer came from cuMemAlloc, is owned only by this
            // device, and is freed exactly once, here.
            if let Err(e) = unsafe { cu::free_sync(ws.ptr) } {
                tracing::error!("cuMemFree (workspace) failed: {e}");
            }
        }
    }
}

/// A captured sequence of launches ([`CudaDevice::capture`]); destroyed on drop.
pub struct DeviceGraph {
    graph: cudarc::driver::CudaGraph,
}

impl std::fmt::Debug for DeviceGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceGraph")
    }
}

impl DeviceGraph {
    /// Queues one replay on the device's stream.
    pub fn launch(&self) -> Result<(), CudaError> {
        self.graph.launch().map_err(drv("cuGraphLaunch"))
    }
}

/// A tensor in device memory. The only owner of its allocation: not `Clone`, freed in
/// `Drop`.
///
/// The path below is right (this compiles) ...
///
/// ```no_run
/// fn keep(t: rocmforge_runtime::cuda::DeviceTensor) -> rocmforge_runtime::cuda::DeviceTensor { t }
/// ```
///
/// ... and cloning does not compile:
///
/// ```compile_fail
/// fn dup(t: &rocmforge_runtime::cuda::DeviceTensor) -> rocmforge_runtime::cuda::DeviceTensor { t.clone() }
/// ```
pub struct DeviceTensor {
    dev: Arc<CudaDevice>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
    dtype: DType,
    shape: Vec<usize>,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({} {:?} on {})", self.dtype, self.shape, self.dev.name)
    }
}

impl DeviceTensor {
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl DeviceTensor {
    fn check_view(&self, offset: usize, shape: &[usize]) -> Result<u64, CudaError> {
        let elems = self.bytes / self.dtype.size().max(1);
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match n.and_then(|n| n.checked_add(offset)) {
            Some(end) if end <= elems => Ok(self.ptr + (offset * self.dtype.size()) as u64),
            _ => Err(CudaError::View { offset, shape: shape.to_vec(), elems }),
        }
    }

    /// A read-only window of `shape` elements starting at element `offset`.
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<DeviceView<'_>, CudaError> {
        let ptr = self.check_view(offset, shape)?;
        Ok(DeviceView { ptr, dtype: self.dtype, shape: shape.to_vec(), _t: std::marker::PhantomData })
    }

    /// A read-only window as [`DeviceTensor::view`] whose elements are read as `dtype`, of
    /// the tensor's element size (f32, i32 and u32 among themselves; f16 and bf16): one
    /// allocation can hold values and ids side by side, copied back in one transfer.
    pub fn view_as(&self, dtype: DType, offset: usize, shape: &[usize]) -> Result<DeviceView<'_>, CudaError> {
        if dtype.size() != self.dtype.size() {
            return Err(CudaError::ViewDType { tensor: self.dtype, view: dtype });
        }
        let ptr = self.check_view(offset, shape)?;
        Ok(DeviceView { ptr, dtype, shape: shape.to_vec(), _t: std::marker::PhantomData })
    }

    /// A writable window of `shape` elements starting at element `offset`; borrowing the
    /// tensor mutably keeps any other view of it from being passed alongside.
    pub fn view_mut(&mut self, offset: usize, shape: &[usize]) -> Result<DeviceViewMut<'_>, CudaError> {
        let ptr = self.check_view(offset, shape)?;
        Ok(DeviceViewMut { ptr, dtype: self.dtype, shape: shape.to_vec(), _t: std::marker::PhantomData })
    }
}

/// A borrowed read-only window of a [`DeviceTensor`] (bounds checked when made).
#[derive(Debug)]
pub struct DeviceView<'a> {
    ptr: u64,
    dtype: DType,
    shape: Vec<usize>,
    _t: std::marker::PhantomData<&'a DeviceTensor>,
}

/// A borrowed writable window of a [`DeviceTensor`] (bounds checked when made).
#[derive(Debug)]
pub struct DeviceViewMut<'a> {
    ptr: u64,
    dtype: DType,
    shape: Vec<usize>,
    _t: std::marker::PhantomData<&'a mut DeviceTensor>,
}

impl_tensor_arg!(DeviceView<'_>, DeviceViewMut<'_>, DeviceTensor);

impl Drop for DeviceTensor {
    fn drop(&mut self) {
        // Work still queued may use the memory: wait, then free.
        let _ = self.dev.stream.synchronize();
        let _ = self.dev.ctx.bind_to_thread();
        // SAFETY: `ptr` came from cuMemAlloc in `alloc`, is owned only by this value
        // (not Clone), and is freed exactly once, here.
        if let Err(e) = unsafe { cu::free_sync(self.ptr) } {
            tracing::error!("cuMemFree failed: {e}");
        }
    }
}

/// The NVRTC target for a device arch: `sm_90a` for `sm_90`, so that Hopper's
/// arch-specific instructions (`wgmma`; `__CUDA_ARCH_FEAT_SM90_ALL` in the source) are
/// available. Such code runs on compute capability 9.0 only, which is the device the
/// CUBIN is compiled for and cached under.
fn nvrtc_arch(arch: &str) -> String {
    if arch == "sm_90" {
        "sm_90a".to_string()
    } else {
        arch.to_string()
    }
}

/// NVRTC to a CUBIN for `target` (from [`nvrtc_arch`], e.g. `sm_90a`): (message,
/// compiler log) on failure.
fn compile_cubin(src: &str, target: &str) -> Result<Vec<u8>, (String, String)> {
    use cudarc::nvrtc::{result, sys};
    let csrc = std::ffi::CString::new(src).map_err(|_| ("kernel source contains a NUL byte".to_string(), String::new()))?;
    let prog = result::create_program(&csrc, None).map_err(|e| (format!("nvrtcCreateProgram: {e:?}"), String::new()))?;
    let options = [format!("--gpu-architecture={target}"), "--std=c++17".to_string(), format!("--include-path={}", cuda_include_dir())];
    // SAFETY: `prog` was just created from `csrc`, which outlives it, and is destroyed
    // exactly once below; the size query and the copy use a buffer of the reported size.
    unsafe {
        let compiled = result::compile_program(prog, &options);
        let out = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| l.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect::<Vec<u8>>())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                Err((format!("nvrtcCompileProgram: {e:?}"), log))
            }
            Ok(()) => {
                let mut size = 0usize;
                let r = sys::nvrtcGetCUBINSize(prog, &mut size);
                if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                    Err((format!("nvrtcGetCUBINSize: {r:?}"), String::new()))
                } else {
                    let mut buf = vec![0u8; size];
                    let r = sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast());
                    if r == sys::nvrtcResult::NVRTC_SUCCESS {
                        Ok(buf)
                    } else {
                        Err((format!("nvrtcGetCUBIN: {r:?}"), String::new()))
                    }
                }
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}

const NO_DRIVER: &str = "the CUDA driver library (libcuda.so) could not be loaded";
const NO_CUBLAS: &str = "libcublas could not be loaded; install the CUDA toolkit's cuBLAS and put its lib directory on LD_LIBRARY_PATH";

/// The vendor libraries cudarc loads on first use.
#[derive(Clone, Copy)]
enum Vendor {
    Driver,
    Nvrtc,
    Blas,
}

/// Whether `v`'s shared library loads on this machine, probed once per library (cudarc
/// panics on first use of one that does not).
fn library_present(v: Vendor) -> bool {
    use std::sync::OnceLock;
    static FOUND: [OnceLock<bool>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    // Each probe opens the vendor library by its usual names and closes it again,
    // running only the library's own initializers, as cudarc's first use does.
    match v {
        // SAFETY: see above.
        Vendor::Driver => *FOUND[0].get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() }),
        // SAFETY: see above.
        Vendor::Nvrtc => *FOUND[1].get_or_init(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }),
        // SAFETY: see above.
        Vendor::Blas => *FOUND[2].get_or_init(|| unsafe { cudarc::cublas::sys::is_culib_present() }),
    }
}

fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through valid pointers to locals.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        format!("{major}.{minor}")
    } else {
        String::from("unknown")
    }
}

/// The CUDA include directory NVRTC needs for `cuda_fp16.h`: `$CUDA_HOME/include`,
/// `$CUDA_PATH/include`, else `/usr/local/cuda/include`.
pub fn cuda_include_dir() -> String {
    for v in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(v) {
            return PathBuf::from(d).join("include").display().to_string();
        }
    }
    "/usr/local/cuda/include".to_string()
}

/// The message of a panic's payload (`panic!` with a literal or a formatted string).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::{library_present, nvrtc_arch, panic_text, CudaDevice, CudaError, Vendor};

    #[test]
    #[allow(clippy::unwrap_used, clippy::panic, reason = "test: the panics are the input")]
    fn a_compile_threads_panic_keeps_its_message() {
        // (The default hook prints these three panics: they are expected.)
        let literal = std::thread::spawn(|| panic!("expected by this test")).join().unwrap_err();
        let formatted = std::thread::spawn(|| panic!("expected, code {}", 7)).join().unwrap_err();
        let other = std::thread::spawn(|| std::panic::panic_any(3_u8)).join().unwrap_err();
        assert_eq!(panic_text(literal.as_ref()), "expected by this test");
        assert_eq!(panic_text(formatted.as_ref()), "expected, code 7");
        assert_eq!(panic_text(other.as_ref()), "no message");
    }

    #[test]
    fn a_missing_driver_is_an_error_not_a_panic() {
        // Without libcuda (CI), counting devices is a typed error naming the library;
        // with it, a count. Never a panic either way.
        match CudaDevice::count() {
            Ok(_) => assert!(library_present(Vendor::Driver)),
            Err(e) => {
                assert!(matches!(e, CudaError::NoDevice(_)), "{e}");
                if !library_present(Vendor::Driver) {
                    assert!(e.to_string().contains("libcuda.so"), "{e}");
                }
            }
        }
    }

    #[test]
    fn hopper_compiles_for_the_arch_specific_target() {
        // wgmma needs sm_90a; every other arch is compiled as the device reports it.
        assert_eq!(nvrtc_arch("sm_90"), "sm_90a");
        for a in ["sm_80", "sm_86", "sm_89", "sm_100", "sm_120"] {
            assert_eq!(nvrtc_arch(a), a);
        }
    }
}
