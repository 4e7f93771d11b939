//! The on-disk kernel cache shared by the run-time compilers (NVRTC, hiprtc): one file per
//! module, named by symbol, arch and a hash of (source, arch, compiler version), written
//! to a temporary file and renamed into place so that a concurrent process never reads a
//! half-written file.

// Only the GPU backends write kernels; a CPU-only build keeps the (tested) helpers.
#![cfg_attr(not(any(feature = "cuda", feature = "rocm")), allow(dead_code, reason = "used by the GPU backends"))]

use std::path::{Path, PathBuf};

/// FNV-1a over several byte strings (each terminated, so ("ab", "c") != ("a", "bc")).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `ROCMFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/rocmforge`, else `~/.cache/rocmforge`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ROCMFORGE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("rocmforge"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("rocmforge"))
}

/// Writes `contents` to `path` (in `dir`) through a temporary file and a rename.
pub(crate) fn write_atomic(dir: &Path, path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{:?}.{}.tmp",
        std::process::id(),
        std::thread::current().id(),
        path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
    ));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// The cached file for (`symbol`, `arch`, source, compiler version), with `ext`.
pub(crate) fn entry(dir: &Path, symbol: &str, arch: &str, src: &str, compiler: &str, ext: &str) -> PathBuf {
    let key = fnv1a(&[src.as_bytes(), arch.as_bytes(), compiler.as_bytes()]);
    dir.join(format!("{symbol}-{arch}-{key:016x}.{ext}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn concurrent_writers_never_expose_a_partial_file() {
        let dir = std::env::temp_dir().join(format!("rocmforge-diskcache-{}", std::process::id()));
        let path = entry(&dir, "rf_k", "sm_90", "src", "nvrtc 13.0", "cubin");
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10 {
                        write_atomic(&dir, &path, &big).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    if let Ok(b) = std::fs::read(&path) {
                        assert_eq!(b.len(), big.len(), "a reader saw a partial file");
                    }
                }
            });
        });
        assert_eq!(std::fs::read(&path).unwrap(), big);
        std::fs::remove_dir_all(&dir).unwrap();
        // The key separates arch, source and compiler version.
        let a = entry(Path::new("/c"), "s", "sm_90", "x", "v1", "cubin");
        assert_ne!(a, entry(Path::new("/c"), "s", "sm_80", "x", "v1", "cubin"));
        assert_ne!(a, entry(Path::new("/c"), "s", "sm_90", "y", "v1", "cubin"));
        assert_ne!(a, entry(Path::new("/c"), "s", "sm_90", "x", "v2", "cubin"));
    }
}
