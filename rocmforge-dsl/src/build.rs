//! The build helper for `build.rs`, in the spirit of `cc` and `cxx-build`.
//!
//! ```no_run
//! // build.rs
//! if let Err(e) = rocmforge_dsl::build::Builder::new().file("src/kernels.rs").compile() {
//!     panic!("{e}");
//! }
//! ```
//!
//! It finds the `#[gpu_kernel]` items in the given files, renders every specialization,
//! compiles them with `hipcc --genco` for each AMD target and with `nvcc -cubin` for each
//! CUDA arch, and writes `$OUT_DIR/rocmforge_kernels.rs`, which embeds the HIP source
//! and the code objects. It writes only into `OUT_DIR`.
//!
//! Environment:
//! - `ROCMFORGE_AMDGPU_TARGETS`: comma-separated gfx targets. Default: those among
//!   [`DEFAULT_AMD_TARGETS`] that the installed hipcc accepts.
//! - `ROCMFORGE_CUDA_ARCHS`: comma-separated `sm_XX`. Default: `sm_80,sm_90` where nvcc
//!   is present.
//! - `HIPCC`, `NVCC`: the compilers (default: `hipcc`, `nvcc` on `PATH`, then
//!   `$ROCM_PATH/bin/hipcc`, `$CUDA_HOME/bin/nvcc`).
//! - `ROCMFORGE_REQUIRE_AOT=1`: a missing hipcc or a failed compile is a build error.
//!   Otherwise the build goes on with one cargo warning and the source embedded, for
//!   compilation at first use.

#![allow(clippy::print_stdout, reason = "build scripts talk to cargo through stdout")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::codegen::{render_source, CodegenError};
use crate::ir::Kernel;
use crate::parse::{find_kernels, parse_kernel};

/// AMD targets tried by default, newest last.
pub const DEFAULT_AMD_TARGETS: [&str; 7] = ["gfx908", "gfx90a", "gfx940", "gfx942", "gfx1030", "gfx1100", "gfx1201"];

/// Wavefront size of an AMD target: 64 on GCN/CDNA (gfx9), 32 on RDNA (gfx10+).
pub fn amd_warp_size(target: &str) -> u32 {
    if target.starts_with("gfx9") {
        64
    } else {
        32
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A source file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A source file is not valid Rust.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A declaration is invalid (the macro reports the same error with its span).
    #[error("{path}:{line}:{column}: in `#[gpu_kernel]` `{kernel}`: {message}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// Kernel name.
        kernel: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The diagnostic.
        message: String,
    },
    /// Rendering failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// Writing into OUT_DIR failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `OUT_DIR` is not set: the helper only runs inside a build script.
    #[error("OUT_DIR is not set: call the build helper from build.rs")]
    NoOutDir,
    /// `ROCMFORGE_REQUIRE_AOT=1` and no compiler was found.
    #[error("ROCMFORGE_REQUIRE_AOT=1 but no HIP compiler was found: install hipcc (Debian/Ubuntu: `apt-get install hipcc libamdhip64-dev`) or set HIPCC")]
    NoCompiler,
    /// A compile failed.
    #[error("{compiler} failed for {target} (command: {command}):\n{log}")]
    Compile {
        /// `hipcc` or `nvcc`.
        compiler: String,
        /// The target or arch.
        target: String,
        /// The command line.
        command: String,
        /// The compiler's output.
        log: String,
    },
}

/// One compiled code object.
#[derive(Debug, Clone)]
pub struct CodeObject {
    /// `gfx90a`, `sm_90`, ...
    pub target: String,
    /// Path in OUT_DIR.
    pub path: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The kernels found.
    pub kernels: Vec<Kernel>,
    /// Code objects written.
    pub objects: Vec<CodeObject>,
    /// The generated Rust file to `include!`.
    pub rust_file: PathBuf,
}

/// Configures and runs a kernel build.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    files: Vec<PathBuf>,
    amd_targets: Option<Vec<String>>,
    cuda_archs: Option<Vec<String>>,
    out_dir: Option<PathBuf>,
    quiet: bool,
}

impl Builder {
    /// A builder with no files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a Rust source file to scan for `#[gpu_kernel]` items.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// Overrides the AMD targets (else `ROCMFORGE_AMDGPU_TARGETS` or the default).
    pub fn amd_targets<S: Into<String>>(mut self, targets: impl IntoIterator<Item = S>) -> Self {
        self.amd_targets = Some(targets.into_iter().map(Into::into).collect());
        self
    }

    /// Overrides the CUDA archs (else `ROCMFORGE_CUDA_ARCHS` or the default).
    pub fn cuda_archs<S: Into<String>>(mut self, archs: impl IntoIterator<Item = S>) -> Self {
        self.cuda_archs = Some(archs.into_iter().map(Into::into).collect());
        self
    }

    /// Writes into `dir` instead of `OUT_DIR`, and prints no cargo directives (tests).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self.quiet = true;
        self
    }

    fn cargo(&self, line: &str) {
        if !self.quiet {
            println!("cargo:{line}");
        }
    }

    /// Parses, renders, compiles and writes the embedding file.
    pub fn compile(self) -> Result<BuildOutput, BuildError> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or(BuildError::NoOutDir)?),
        };
        for t in TEMPLATE_FILES {
            self.cargo(&format!("rerun-if-changed={}", Path::new(env!("CARGO_MANIFEST_DIR")).join(t).display()));
        }
        for v in [
            "ROCMFORGE_AMDGPU_TARGETS",
            "ROCMFORGE_CUDA_ARCHS",
            "ROCMFORGE_REQUIRE_AOT",
            "HIPCC",
            "NVCC",
            "ROCM_PATH",
            "CUDA_HOME",
            "CUDA_PATH",
        ] {
            self.cargo(&format!("rerun-if-env-changed={v}"));
        }
        let require = std::env::var("ROCMFORGE_REQUIRE_AOT").is_ok_and(|v| v == "1");

        let mut kernels = Vec::new();
        for path in &self.files {
            self.cargo(&format!("rerun-if-changed={}", path.display()));
            let src = std::fs::read_to_string(path).map_err(|source| BuildError::Read { path: path.clone(), source })?;
            let file = syn::parse_file(&src).map_err(|e| {
                let s = e.span().start();
                BuildError::Syntax { path: path.clone(), line: s.line, column: s.column + 1, message: e.to_string() }
            })?;
            for (attr, item) in find_kernels(&file) {
                let k = parse_kernel(attr, &item).map_err(|e| {
                    let s = e.span().start();
                    BuildError::Kernel {
                        path: path.clone(),
                        kernel: item.sig.ident.to_string(),
                        line: s.line,
                        column: s.column + 1,
                        message: e.to_string(),
                    }
                })?;
                kernels.push(k);
            }
        }

        let dir = out_dir.join("rocmforge");
        std::fs::create_dir_all(&dir).map_err(|source| BuildError::Write { path: dir.clone(), source })?;
        let mut sources = Vec::new();
        for warp in crate::spec::WARP_SIZES {
            let mut tu = String::new();
            for (i, k) in kernels.iter().enumerate() {
                let src = render_source(k, &k.specs(warp))?;
                // The header is included once per translation unit.
                tu.push_str(if i == 0 { &src } else { &src[crate::codegen::PORTABILITY_HEADER.len()..] });
            }
            let path = dir.join(format!("kernels_w{warp}.hip"));
            write_if_changed(&path, &tu)?;
            sources.push((warp, path));
        }

        let mut objects = Vec::new();
        let mut warnings = Vec::new();
        let hipcc = find_tool("HIPCC", "hipcc", &[("ROCM_PATH", "bin/hipcc")]);
        let amd_targets = match (&self.amd_targets, std::env::var("ROCMFORGE_AMDGPU_TARGETS")) {
            (Some(t), _) => t.clone(),
            (None, Ok(v)) => v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            (None, Err(_)) => match &hipcc {
                Some(h) => probe_amd_targets(h, &dir),
                None => Vec::new(),
            },
        };
        match &hipcc {
            None if require => return Err(BuildError::NoCompiler),
            None => warnings.push("hipcc not found: no AMD code objects built; kernels compile at first use (hiprtc/NVRTC). Install hipcc or set HIPCC to build them ahead of time.".to_string()),
            Some(h) => {
                let results: Vec<Result<CodeObject, BuildError>> = std::thread::scope(|s| {
                    let handles: Vec<_> = amd_targets
                        .iter()
                        .map(|t| {
                            let src = sources.iter().find(|(w, _)| *w == amd_warp_size(t)).map(|(_, p)| p.clone());
                            let dir = &dir;
                            s.spawn(move || compile_hip(h, t, src.as_deref().unwrap_or(Path::new("")), dir))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .zip(&amd_targets)
                        .map(|(h, t)| {
                            h.join().unwrap_or_else(|_| {
                                Err(BuildError::Compile {
                                    compiler: "hipcc".into(),
                                    target: t.clone(),
                                    command: String::new(),
                                    log: "the compile thread panicked".into(),
                                })
                            })
                        })
                        .collect()
                });
                for r in results {
                    match r {
                        Ok(o) => objects.push(o),
                        Err(e) if require => return Err(e),
                        Err(e) => warnings.push(format!("AOT compile skipped: {e}")),
                    }
                }
            }
        }
        if let Some(nvcc) = find_tool("NVCC", "nvcc", &[("CUDA_HOME", "bin/nvcc"), ("CUDA_PATH", "bin/nvcc")]) {
            let archs = match (&self.cuda_archs, std::env::var("ROCMFORGE_CUDA_ARCHS")) {
                (Some(a), _) => a.clone(),
                (None, Ok(v)) => v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                (None, Err(_)) => vec!["sm_80".to_string(), "sm_90".to_string()],
            };
            let src = sources.iter().find(|(w, _)| *w == 32).map(|(_, p)| p.clone()).unwrap_or_default();
            for arch in archs {
                match compile_cuda(&nvcc, &arch, &src, &dir) {
                    Ok(o) => objects.push(o),
                    Err(e) if require => return Err(e),
                    Err(e) => warnings.push(format!("CUDA AOT compile skipped: {e}")),
                }
            }
        }
        for w in &warnings {
            self.cargo(&format!("warning={}", w.lines().next().unwrap_or_default()));
        }

        let mut rs = String::from("// Generated by rocmforge-dsl's build helper. Do not edit.\n\n");
        let names: Vec<String> = kernels.iter().map(|k| format!("{:?}", k.name)).collect();
        let _ = writeln!(
            rs,
            "/// Names of the kernels built into this crate.\npub const ROCMFORGE_KERNEL_NAMES: &[&str] = &[{}];",
            names.join(", ")
        );
        let _ = writeln!(rs, "/// HIP source of every specialization, by warp size, for compilation at first use.\npub const ROCMFORGE_SOURCES: &[(u32, &str)] = &[");
        for (w, p) in &sources {
            let _ = writeln!(rs, "    ({w}, include_str!({:?})),", p.display().to_string());
        }
        let _ = writeln!(
            rs,
            "];\n/// Code objects compiled ahead of time: (target, bytes).\npub const ROCMFORGE_CODE_OBJECTS: &[(&str, &[u8])] = &["
        );
        for o in &objects {
            let _ = writeln!(rs, "    ({:?}, include_bytes!({:?})),", o.target, o.path.display().to_string());
        }
        rs.push_str("];\n");
        let rust_file = out_dir.join("rocmforge_kernels.rs");
        write_if_changed(&rust_file, &rs)?;
        Ok(BuildOutput { kernels, objects, rust_file })
    }
}

const TEMPLATE_FILES: [&str; 4] =
    ["../templates/rocmforge.h", "../templates/elementwise.hip.tera", "../templates/rowwise.hip.tera", "../templates/rope.hip.tera"];

fn write_if_changed(path: &Path, contents: &str) -> Result<(), BuildError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| BuildError::Write { path: path.to_path_buf(), source })
}

/// Finds a tool: the env override, then `PATH`, then the given `$VAR/relative` paths.
pub fn find_tool(env: &str, name: &str, fallbacks: &[(&str, &str)]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    fallbacks.iter().filter_map(|(var, rel)| std::env::var_os(var).map(|v| PathBuf::from(v).join(rel))).find(|p| p.is_file())
}

/// The hipcc arguments for one AMD target. `-Wall` always; warnings are reported.
pub fn hipcc_args(target: &str, src: &Path, out: &Path) -> Vec<String> {
    vec![
        "--genco".into(),
        format!("--offload-arch={target}"),
        "-O3".into(),
        "-std=c++17".into(),
        "-Wall".into(),
        "-x".into(),
        "hip".into(),
        src.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ]
}

fn compile_hip(hipcc: &Path, target: &str, src: &Path, dir: &Path) -> Result<CodeObject, BuildError> {
    let out = dir.join(format!("kernels_{target}.hsaco"));
    run_compiler("hipcc", hipcc, &hipcc_args(target, src, &out), target)?;
    Ok(CodeObject { target: target.to_string(), path: out })
}

fn compile_cuda(nvcc: &Path, arch: &str, src: &Path, dir: &Path) -> Result<CodeObject, BuildError> {
    let out = dir.join(format!("kernels_{arch}.cubin"));
    let args = vec![
        "-cubin".into(),
        format!("-arch={arch}"),
        "-O3".into(),
        "-std=c++17".into(),
        "-x".into(),
        "cu".into(),
        src.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    run_compiler("nvcc", nvcc, &args, arch)?;
    Ok(CodeObject { target: arch.to_string(), path: out })
}

fn run_compiler(name: &str, tool: &Path, args: &[String], target: &str) -> Result<(), BuildError> {
    let command = format!("{} {}", tool.display(), args.join(" "));
    let output = Command::new(tool).args(args).output().map_err(|e| BuildError::Compile {
        compiler: name.into(),
        target: target.into(),
        command: command.clone(),
        log: e.to_string(),
    })?;
    if !output.status.success() {
        let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(BuildError::Compile { compiler: name.into(), target: target.into(), command, log });
    }
    Ok(())
}

/// The default targets this hipcc accepts, found by compiling an empty kernel for each.
pub fn probe_amd_targets(hipcc: &Path, dir: &Path) -> Vec<String> {
    let src = dir.join("probe.hip");
    if std::fs::write(&src, "#include <hip/hip_runtime.h>\nextern \"C\" __global__ void rf_probe() {}\n").is_err() {
        return Vec::new();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = DEFAULT_AMD_TARGETS
            .iter()
            .map(|t| {
                let src = &src;
                s.spawn(move || {
                    let out = dir.join(format!("probe_{t}.o"));
                    let ok = Command::new(hipcc)
                        .args(["--genco", &format!("--offload-arch={t}"), "-x", "hip"])
                        .arg(src)
                        .arg("-o")
                        .arg(&out)
                        .output()
                        .is_ok_and(|o| o.status.success() && out.is_file());
                    ok.then(|| t.to_string())
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok().flatten()).collect()
    })
}
