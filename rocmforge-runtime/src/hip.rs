//! AMD backend through hip-runtime-sys (feature `rocm`): devices, RAII buffers, modules
//! from the ahead-of-time code objects where one matches the device's arch, otherwise
//! compiled at first use with hiprtc (part of libamdhip64) and cached on disk like the
//! CUDA backend's CUBINs, and launches. With no AMD GPU present, opening a device is a
//! typed error; hiprtc compiles without a GPU, which the tests use.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, OnceLock};

use hip_runtime_sys as hip;
use rocmforge_dsl::codegen::render_source;
use rocmforge_dsl::interp::HostTensor;
use rocmforge_dsl::{DType, Kernel, Spec};

use crate::cache::OnceMap;
use crate::diskcache::{cache_dir, entry, write_atomic};
use crate::plan::{DeviceLimits, LaunchError, LaunchPlan};

/// Errors of the AMD backend; each names the failing call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HipError {
    /// No AMD GPU or no usable ROCm runtime.
    #[error("no AMD GPU available ({0}); check the ROCm installation with rocminfo, or choose the cpu device")]
    NoDevice(String),
    /// A HIP call failed.
    #[error("HIP call {call} failed: {message} (code {code})")]
    Call {
        /// The call.
        call: &'static str,
        /// hipError_t value.
        code: i32,
        /// hipGetErrorString.
        message: String,
    },
    /// An allocation did not fit.
    #[error("out of device memory: {requested} bytes requested, {free} of {total} free")]
    OutOfMemory {
        /// Bytes asked for.
        requested: usize,
        /// Bytes free.
        free: usize,
        /// Bytes in all.
        total: usize,
    },
    /// hiprtc could not compile a kernel.
    #[error("hiprtc failed to compile kernel `{kernel}` for {arch}: {message}\n{log}")]
    Compile {
        /// Kernel name.
        kernel: String,
        /// Target arch.
        arch: String,
        /// What failed.
        message: String,
        /// The compiler's log.
        log: String,
    },
    /// Host and device sizes disagree.
    #[error("{what}: host buffer of {host} bytes, device buffer of {device} bytes")]
    SizeMismatch {
        /// Which copy.
        what: &'static str,
        /// Host bytes.
        host: usize,
        /// Device bytes.
        device: usize,
    },
    /// The launch plan was rejected.
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

fn check(call: &'static str, r: hip::hipError_t) -> Result<(), HipError> {
    if r == hip::hipError_t::hipSuccess {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static NUL-terminated string for any code.
    let message = unsafe { CStr::from_ptr(hip::hipGetErrorString(r)) }.to_string_lossy().into_owned();
    Err(HipError::Call { call, code: r as i32, message })
}

/// Text of a fixed-size C string field.
fn c_field(bytes: &[c_char]) -> String {
    let b: Vec<u8> = bytes.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// One AMD GPU: properties, module cache, the AOT code object for its arch if embedded.
pub struct HipDevice {
    ordinal: c_int,
    name: String,
    arch: String,
    compute_units: u32,
    total_mem: usize,
    limits: DeviceLimits,
    aot: Option<&'static [u8]>,
    aot_module: OnceLock<Result<usize, String>>,
    modules: OnceMap<Result<usize, String>>,
    functions: OnceMap<Result<usize, String>>,
    /// Zeroed scratch for kernels that ask for it (split-KV attention): (address,
    /// bytes), owned by the device, grown on demand, freed in Drop. Launches are ordered
    /// on the null stream, so one buffer serves them all.
    workspace: std::sync::Mutex<(usize, usize)>,
}

impl std::fmt::Debug for HipDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HipDevice").field("name", &self.name).field("arch", &self.arch).field("limits", &self.limits).finish()
    }
}

impl HipDevice {
    /// AMD GPUs present (0 when the runtime reports none).
    pub fn count() -> Result<usize, HipError> {
        let mut n: c_int = 0;
        // SAFETY: writes one int through a valid pointer.
        let r = unsafe { hip::hipGetDeviceCount(&mut n) };
        if r == hip::hipError_t::hipErrorNoDevice {
            return Ok(0);
        }
        check("hipGetDeviceCount", r).map_err(|e| HipError::NoDevice(e.to_string()))?;
        Ok(n.max(0) as usize)
    }

    /// Opens GPU `ordinal`; `code_objects` are a crate's AOT objects (target, bytes), of
    /// which the one for this device's arch, if any, is used instead of hiprtc.
    pub fn open(ordinal: usize, code_objects: &[(&str, &'static [u8])]) -> Result<Arc<Self>, HipError> {
        let count = Self::count()?;
        if ordinal >= count {
            return Err(HipError::NoDevice(format!("hip:{ordinal} requested, {count} device(s) present")));
        }
        let id = ordinal as c_int;
        // SAFETY: `id` is a valid ordinal (checked above).
        check("hipSetDevice", unsafe { hip::hipSetDevice(id) })?;
        let mut p = hip::hipDeviceProp_t::default();
        // SAFETY: writes one hipDeviceProp_t through a valid pointer.
        check("hipGetDeviceProperties", unsafe { hip::hipGetDeviceProperties(&mut p, id) })?;
        // "gfx90a:sramecc+:xnack-" -> "gfx90a"
        let full = c_field(&p.gcnArchName);
        let arch = full.split(':').next().unwrap_or_default().to_string();
        let limits = DeviceLimits {
            warp_size: p.warpSize.max(1) as u32,
            max_threads_per_block: p.maxThreadsPerBlock.max(1) as u32,
            max_grid: [p.maxGridSize[0].max(1) as u32, p.maxGridSize[1].max(1) as u32, p.maxGridSize[2].max(1) as u32],
            max_shared_bytes: u32::try_from(p.sharedMemPerBlock).unwrap_or(u32::MAX),
            compute_units: p.multiProcessorCount.max(1) as u32,
            mma: false,
            // The MFMA prefill (gfx90a, gfx94x) compiles (CI, hipcc) but has not run on an
            // AMD GPU, and the self-check is CUDA-only: it is taken only when asked for.
            mfma: (arch == "gfx90a" || arch.starts_with("gfx94")) && std::env::var("ROCMFORGE_MFMA").as_deref() == Ok("1"),
            // The WMMA prefill (RDNA3): compiled for gfx1100 in CI, never run; only on the
            // archs whose build has its body.
            wmma: rocmforge_dsl::spec::WMMA_ARCHS.contains(&arch.as_str()) && std::env::var("ROCMFORGE_WMMA").as_deref() == Ok("1"),
            clusters: false,
            wgmma: false,
        };
        let aot = code_objects.iter().find(|(t, _)| *t == arch).map(|(_, b)| *b);
        Ok(Arc::new(HipDevice {
            ordinal: id,
            name: c_field(&p.name),
            arch,
            compute_units: p.multiProcessorCount.max(0) as u32,
            total_mem: p.totalGlobalMem,
            limits,
            aot,
            aot_module: OnceLock::new(),
            modules: OnceMap::new(),
            functions: OnceMap::new(),
            workspace: std::sync::Mutex::new((0, 0)),
        }))
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The HIP ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal as usize
    }
    /// `gfxNNN`.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// Compute units.
    pub fn compute_units(&self) -> u32 {
        self.compute_units
    }
    /// Launch limits.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }
    /// Total device memory, bytes.
    pub fn total_memory(&self) -> usize {
        self.total_mem
    }
    fn bind(&self) -> Result<(), HipError> {
        // SAFETY: the ordinal was valid when the device was opened.
        check("hipSetDevice", unsafe { hip::hipSetDevice(self.ordinal) })
    }
    /// Free and total device memory, bytes.
    pub fn memory_info(&self) -> Result<(usize, usize), HipError> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two size_t through valid pointers.
        check("hipMemGetInfo", unsafe { hip::hipMemGetInfo(&mut free, &mut total) })?;
        Ok((free, total))
    }

    /// Allocates an uninitialized tensor.
    pub fn alloc(self: &Arc<Self>, dtype: DType, shape: &[usize]) -> Result<HipTensor, HipError> {
        let bytes = crate::plan::byte_size(dtype, shape);
        let Some(bytes) = bytes else {
            return Err(HipError::OutOfMemory { requested: usize::MAX, free: 0, total: self.total_mem });
        };
        self.bind()?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: writes one pointer; the allocation is owned by the returned HipTensor
        // and freed once in its Drop.
        let r = unsafe { hip::hipMalloc(&mut ptr, bytes.max(1)) };
        if r == hip::hipError_t::hipErrorOutOfMemory {
            let (free, total) = self.memory_info().unwrap_or((0, self.total_mem));
            return Err(HipError::OutOfMemory { requested: bytes, free, total });
        }
        check("hipMalloc", r)?;
        Ok(HipTensor { dev: Arc::clone(self), ptr, bytes, dtype, shape: shape.to_vec() })
    }

    /// Copies a host tensor to a new device tensor.
    pub fn upload(self: &Arc<Self>, t: &HostTensor) -> Result<HipTensor, HipError> {
        let d = self.alloc(t.dtype(), &t.shape)?;
        let bytes = t.to_bytes();
        if bytes.len() != d.bytes {
            return Err(HipError::SizeMismatch { what: "upload", host: bytes.len(), device: d.bytes });
        }
        // SAFETY: `d.ptr` holds `d.bytes` == `bytes.len()` bytes; hipMemcpy is synchronous.
        check("hipMemcpy(HtoD)", unsafe {
            hip::hipMemcpy(d.ptr, bytes.as_ptr().cast(), bytes.len(), hip::hipMemcpyKind::hipMemcpyHostToDevice)
        })?;
        Ok(d)
    }

    /// Copies a device tensor back to the host (after pending work).
    pub fn download(&self, d: &HipTensor) -> Result<HostTensor, HipError> {
        self.synchronize()?;
        let mut bytes = vec![0u8; d.bytes];
        // SAFETY: `bytes` has exactly `d.bytes` bytes, the allocation's size.
        check("hipMemcpy(DtoH)", unsafe {
            hip::hipMemcpy(bytes.as_mut_ptr().cast(), d.ptr, d.bytes, hip::hipMemcpyKind::hipMemcpyDeviceToHost)
        })?;
        HostTensor::from_bytes(d.dtype, &d.shape, &bytes).ok_or(HipError::SizeMismatch {
            what: "download",
            host: bytes.len(),
            device: d.bytes,
        })
    }

    /// Device-to-device copy of `src` into `dst` (same byte size).
    pub fn copy(&self, src: &HipTensor, dst: &mut HipTensor) -> Result<(), HipError> {
        if src.bytes != dst.bytes {
            return Err(HipError::SizeMismatch { what: "device copy", host: src.bytes, device: dst.bytes });
        }
        self.bind()?;
        // SAFETY: both allocations hold `src.bytes` bytes and are distinct (`&mut dst`).
        check("hipMemcpy(DtoD)", unsafe { hip::hipMemcpy(dst.ptr, src.ptr, src.bytes, hip::hipMemcpyKind::hipMemcpyDeviceToDevice) })
    }

    /// Fills a tensor with all-ones bytes: NaN in f32, f16 and bf16.
    pub fn poison(&self, d: &mut HipTensor) -> Result<(), HipError> {
        self.bind()?;
        // SAFETY: writes exactly the allocation's bytes.
        check("hipMemset", unsafe { hip::hipMemset(d.ptr, 0xff, d.bytes) })
    }

    /// A timing event (recorded on the null stream, which launches use).
    pub fn event(&self) -> Result<HipEvent, HipError> {
        self.bind()?;
        let mut e: hip::hipEvent_t = std::ptr::null_mut();
        // SAFETY: writes one handle, owned by the returned HipEvent and destroyed in its Drop.
        check("hipEventCreate", unsafe { hip::hipEventCreate(&mut e) })?;
        Ok(HipEvent(e))
    }

    /// Waits for all work on the device.
    pub fn synchronize(&self) -> Result<(), HipError> {
        self.bind()?;
        // SAFETY: no arguments.
        check("hipDeviceSynchronize", unsafe { hip::hipDeviceSynchronize() })
    }

    /// The function for a planned launch: from the AOT code object when it has the
    /// symbol, else from the spec's hiprtc module. Handles are kept as integers.
    fn function(&self, kernel: &Kernel, spec: &Spec, symbol: &str) -> Result<hip::hipFunction_t, HipError> {
        let f = self.functions.get_or_init(symbol, || {
            let module = match self.aot {
                Some(bytes) => self.aot_module.get_or_init(|| load_module(bytes).map_err(|e| e.to_string())).clone()?,
                None => self.module(kernel, spec).map_err(|e| e.to_string())?,
            };
            get_function(module, symbol).map_err(|e| e.to_string())
        });
        f.map(|h| h as hip::hipFunction_t).map_err(|message| HipError::Compile {
            kernel: kernel.name.clone(),
            arch: self.arch.clone(),
            message,
            log: String::new(),
        })
    }

    fn module(&self, kernel: &Kernel, spec: &Spec) -> Result<usize, HipError> {
        let base = rocmforge_dsl::symbol_name(&kernel.name, spec);
        let m = self.modules.get_or_init(&base, || {
            let src = render_source(kernel, &[*spec]).map_err(|e| e.to_string())?;
            let code = compile_cached(&src, &self.arch, &base).map_err(|e| e.to_string())?;
            load_module(&code).map_err(|e| e.to_string())
        });
        m.map_err(|message| HipError::Compile { kernel: kernel.name.clone(), arch: self.arch.clone(), message, log: String::new() })
    }

    /// Launches a planned kernel (on the null stream).
    pub fn launch(&self, kernel: &Kernel, plan: &LaunchPlan) -> Result<(), HipError> {
        if plan.kernel != kernel.name {
            return Err(LaunchError::Kernel(format!("plan for `{}` launched as `{}`", plan.kernel, kernel.name)).into());
        }
        if plan.cluster_z > 1 {
            return Err(LaunchError::Kernel(format!("plan for `{}` asks for clusters, which HIP devices do not have", plan.kernel)).into());
        }
        self.bind()?;
        let f = self.function(kernel, &plan.spec, &plan.symbol)?;
        let mut storage = plan.param_slots();
        // Held until the launch is queued, so a launch that grows the buffer waits; taken
        // only by launches that use the workspace.
        let mut ws_guard = None;
        if plan.workspace_bytes > 0 {
            let ws = ws_guard.insert(self.workspace.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            let need = usize::try_from(plan.workspace_bytes).unwrap_or(usize::MAX);
            if ws.1 < need {
                self.synchronize()?;
                if ws.1 > 0 {
                    // SAFETY: the address came from hipMalloc below, owned by this device;
                    // queued work finished (synchronize above). Replaced right after.
                    check("hipFree", unsafe { hip::hipFree(ws.0 as *mut c_void) })?;
                    **ws = (0, 0);
                }
                let bytes = need.next_power_of_two();
                let mut ptr: *mut c_void = std::ptr::null_mut();
                // SAFETY: writes one pointer; the allocation is owned by this device's
                // workspace and freed here on growth or in Drop.
                let r = unsafe { hip::hipMalloc(&mut ptr, bytes) };
                if r == hip::hipError_t::hipErrorOutOfMemory {
                    let (free, total) = self.memory_info().unwrap_or((0, self.total_mem));
                    return Err(HipError::OutOfMemory { requested: bytes, free, total });
                }
                check("hipMalloc", r)?;
                **ws = (ptr as usize, bytes);
                // SAFETY: writes exactly the new allocation's bytes.
                check("hipMemset", unsafe { hip::hipMemset(ptr, 0, bytes) })?;
            }
            if let Some(last) = storage.last_mut() {
                *last = (ws.0 as u64).to_ne_bytes();
            }
        }
        let mut params: Vec<*mut c_void> = storage.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        // SAFETY: as for the CUDA backend: one 8-byte slot per kernel parameter in order,
        // each holding the value in the width the generated signature declares; grid and
        // block were checked against this device's limits by the plan; the pointers are
        // live allocations owned by the caller.
        check("hipModuleLaunchKernel", unsafe {
            hip::hipModuleLaunchKernel(
                f,
                plan.grid[0],
                plan.grid[1],
                plan.grid[2],
                plan.block[0],
                plan.block[1],
                plan.block[2],
                plan.shared_bytes,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }
}

impl Drop for HipDevice {
    fn drop(&mut self) {
        let ws = *self.workspace.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ws.1 > 0 && self.synchronize().is_ok() {
            // SAFETY: the workspace came from hipMalloc, is owned only by this device and
            // is freed exactly once, here, after its work finished.
            let r = unsafe { hip::hipFree(ws.0 as *mut c_void) };
            if r != hip::hipError_t::hipSuccess {
                tracing::warn!("hipFree (workspace) failed: {r:?}");
            }
        }
    }
}

fn load_module(code: &[u8]) -> Result<usize, HipError> {
    let mut m: hip::hipModule_t = std::ptr::null_mut();
    // SAFETY: `code` is a complete code object; the module handle is kept for the
    // process's life (modules are never unloaded).
    check("hipModuleLoadData", unsafe { hip::hipModuleLoadData(&mut m, code.as_ptr().cast()) })?;
    Ok(m as usize)
}

fn get_function(module: usize, symbol: &str) -> Result<usize, HipError> {
    let name = CString::new(symbol).map_err(|_| HipError::NoDevice("symbol with a NUL byte".into()))?;
    let mut f: hip::hipFunction_t = std::ptr::null_mut();
    // SAFETY: `module` is a live module handle from hipModuleLoadData; `name` is NUL-terminated.
    check("hipModuleGetFunction", unsafe { hip::hipModuleGetFunction(&mut f, module as hip::hipModule_t, name.as_ptr()) })?;
    Ok(f as usize)
}

/// hiprtc with the on-disk cache.
fn compile_cached(src: &str, arch: &str, symbol: &str) -> Result<Vec<u8>, HipError> {
    let version = runtime_version();
    let dir = cache_dir();
    let path = dir.as_ref().map(|d| entry(d, symbol, arch, src, &version, "hsaco"));
    if let Some(b) = path.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| !b.is_empty()) {
        return Ok(b);
    }
    let code = hiprtc_compile(src, arch).map_err(|(message, log)| HipError::Compile {
        kernel: symbol.to_string(),
        arch: arch.to_string(),
        message,
        log,
    })?;
    if let (Some(dir), Some(path)) = (dir, path) {
        if let Err(e) = write_atomic(&dir, &path, &code) {
            tracing::warn!("could not write the kernel cache {}: {e}", path.display());
        }
    }
    Ok(code)
}

fn runtime_version() -> String {
    let mut v: c_int = 0;
    // SAFETY: writes one int through a valid pointer.
    let r = unsafe { hip::hipRuntimeGetVersion(&mut v) };
    format!("hip {v} ({r:?})")
}

/// hiprtc's C API, which libamdhip64 (linked by hip-runtime-sys) exports.
mod rtc {
    use std::ffi::{c_char, c_int, c_void};
    pub type Program = *mut c_void;
    extern "C" {
        pub fn hiprtcCreateProgram(
            prog: *mut Program,
            src: *const c_char,
            name: *const c_char,
            num_headers: c_int,
            headers: *const *const c_char,
            include_names: *const *const c_char,
        ) -> c_int;
        pub fn hiprtcCompileProgram(prog: Program, num_options: c_int, options: *const *const c_char) -> c_int;
        pub fn hiprtcGetProgramLogSize(prog: Program, size: *mut usize) -> c_int;
        pub fn hiprtcGetProgramLog(prog: Program, log: *mut c_char) -> c_int;
        pub fn hiprtcGetCodeSize(prog: Program, size: *mut usize) -> c_int;
        pub fn hiprtcGetCode(prog: Program, code: *mut c_char) -> c_int;
        pub fn hiprtcDestroyProgram(prog: *mut Program) -> c_int;
    }
}

/// Compiles HIP source to a code object for `arch` (`gfx90a`) with hiprtc; no GPU needed.
/// On failure: (what failed, the compiler's log).
pub fn hiprtc_compile(src: &str, arch: &str) -> Result<Vec<u8>, (String, String)> {
    let csrc = CString::new(src).map_err(|_| ("source contains a NUL byte".to_string(), String::new()))?;
    let name = c"rocmforge.hip";
    let opts: Vec<CString> = [format!("--offload-arch={arch}"), "-O3".to_string(), "-std=c++17".to_string()]
        .into_iter()
        .filter_map(|o| CString::new(o).ok())
        .collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: rtc::Program = std::ptr::null_mut();
    // SAFETY: every pointer is to a live NUL-terminated string; no headers are passed.
    let r = unsafe { rtc::hiprtcCreateProgram(&mut prog, csrc.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
    if r != 0 {
        return Err((format!("hiprtcCreateProgram returned {r}"), String::new()));
    }
    // SAFETY: `prog` is a live program (created above, destroyed once at the end); the
    // option array holds `opt_ptrs.len()` live strings; the log and code buffers have the
    // sizes hiprtc reported.
    unsafe {
        let r = rtc::hiprtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
        let out = if r != 0 {
            let mut n = 0usize;
            let mut log = String::new();
            if rtc::hiprtcGetProgramLogSize(prog, &mut n) == 0 && n > 0 {
                let mut buf = vec![0 as c_char; n];
                if rtc::hiprtcGetProgramLog(prog, buf.as_mut_ptr()) == 0 {
                    log = c_field(&buf);
                }
            }
            Err((format!("hiprtcCompileProgram returned {r}"), log))
        } else {
            let mut n = 0usize;
            if rtc::hiprtcGetCodeSize(prog, &mut n) != 0 || n == 0 {
                Err(("hiprtcGetCodeSize failed or returned 0 bytes".to_string(), String::new()))
            } else {
                let mut buf = vec![0u8; n];
                if rtc::hiprtcGetCode(prog, buf.as_mut_ptr().cast()) == 0 {
                    Ok(buf)
                } else {
                    Err(("hiprtcGetCode failed".to_string(), String::new()))
                }
            }
        };
        rtc::hiprtcDestroyProgram(&mut prog);
        out
    }
}

/// A device allocation with dtype and shape: the only owner of its pointer (not
/// `Clone`), freed in `Drop`.
///
/// The path below is right (this compiles) ...
///
/// ```no_run
/// fn keep(t: rocmforge_runtime::hip::HipTensor) -> rocmforge_runtime::hip::HipTensor { t }
/// ```
///
/// ... and cloning does not compile:
///
/// ```compile_fail
/// fn dup(t: &rocmforge_runtime::hip::HipTensor) -> rocmforge_runtime::hip::HipTensor { t.clone() }
/// ```
#[derive(Debug)]
pub struct HipTensor {
    dev: Arc<HipDevice>,
    ptr: *mut c_void,
    bytes: usize,
    dtype: DType,
    shape: Vec<usize>,
}

impl HipTensor {
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

impl crate::plan::TensorArg for HipTensor {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn device_ptr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for HipTensor {
    fn drop(&mut self) {
        let _ = self.dev.synchronize();
        // SAFETY: `ptr` came from hipMalloc on this device, is owned only by this value
        // (not Clone), and pending work was waited for above.
        let r = unsafe { hip::hipFree(self.ptr) };
        if r != hip::hipError_t::hipSuccess {
            tracing::warn!("hipFree failed: {r:?}");
        }
    }
}

/// A HIP event: record it on the stream, then read the time between two.
#[derive(Debug)]
pub struct HipEvent(hip::hipEvent_t);

impl HipEvent {
    /// Records the event on the null stream.
    pub fn record(&self) -> Result<(), HipError> {
        // SAFETY: the handle is live (destroyed only in Drop).
        check("hipEventRecord", unsafe { hip::hipEventRecord(self.0, std::ptr::null_mut()) })
    }
    /// Milliseconds from `self` to `later`, after waiting for `later`.
    pub fn elapsed_ms(&self, later: &HipEvent) -> Result<f32, HipError> {
        let mut ms = 0f32;
        // SAFETY: both handles are live; writes one float.
        unsafe {
            check("hipEventSynchronize", hip::hipEventSynchronize(later.0))?;
            check("hipEventElapsedTime", hip::hipEventElapsedTime(&mut ms, self.0, later.0))?;
        }
        Ok(ms)
    }
}

impl Drop for HipEvent {
    fn drop(&mut self) {
        // SAFETY: the handle came from hipEventCreate and is destroyed once, here.
        let _ = unsafe { hip::hipEventDestroy(self.0) };
    }
}
