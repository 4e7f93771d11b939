//! Safetensors checkpoints, single-file or sharded through `model.safetensors.index.json`,
//! memory-mapped. f32 tensors and f16/bf16 matrices are used in place from the mapping
//! (no copy; 16-bit values are widened to f32 as the products read them); f16 and bf16
//! vectors (norms, biases) are widened to f32 once, at load.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::Fields;
use crate::error::{read_json, ModelError, Result};

/// A weight tensor: f32 values, or the f16/bf16 values of a checkpoint's matrix, read in
/// place and widened to f32 (exactly) where they are used.
#[derive(Debug)]
pub struct Weight {
    data: WeightData,
    shape: Vec<usize>,
}

#[derive(Debug)]
enum WeightData {
    /// f32 data in a mapped file; `start..start + 4 * len` is in bounds and 4-byte aligned
    /// (checked when the weight is made).
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Vec<f32>),
    /// 16-bit data in a mapped file; `start..start + 2 * len` is in bounds and 2-byte
    /// aligned (checked when the weight is made).
    Mapped16 {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
        bf16: bool,
    },
}

/// A weight's values as stored: f32, or f16 / bf16 bit patterns.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// IEEE half-precision bit patterns.
    F16(&'a [u16]),
    /// bfloat16 bit patterns (the high half of an f32).
    BF16(&'a [u16]),
}

impl<'a> Values<'a> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F16(v) | Values::BF16(v) => v.len(),
        }
    }
    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values `range`, in the same storage; `None` past the end.
    pub fn get(self, range: std::ops::Range<usize>) -> Option<Values<'a>> {
        Some(match self {
            Values::F32(v) => Values::F32(v.get(range)?),
            Values::F16(v) => Values::F16(v.get(range)?),
            Values::BF16(v) => Values::BF16(v.get(range)?),
        })
    }
    /// Values `start..start + dst.len()` widened to f32 into `dst` (exact). Panics past
    /// the end, like slice indexing: callers index within the weight's shape.
    pub(crate) fn widen_into(&self, start: usize, dst: &mut [f32]) {
        let range = start..start + dst.len();
        match self {
            Values::F32(v) => dst.copy_from_slice(&v[range]),
            Values::F16(v) => f16_to_f32_slice(&v[range], dst),
            Values::BF16(v) => dst.iter_mut().zip(&v[range]).for_each(|(d, &b)| *d = bf16_to_f32(b)),
        }
    }
}

/// f16 bit patterns widened to f32 (exact; SIMD where the CPU has it). `dst` is as long
/// as `src`.
#[inline]
pub(crate) fn f16_to_f32_slice(src: &[u16], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    src.reinterpret_cast::<half::f16>().convert_to_f32_slice(dst);
}

/// A bfloat16 bit pattern as f32 (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

impl Weight {
    /// A weight from owned values (the demo model, tests).
    pub fn from_vec(data: Vec<f32>, shape: Vec<usize>) -> Result<Self> {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(data.len()) {
            return Err(ModelError::Invalid(format!("{} values do not fill shape {shape:?}", data.len())));
        }
        Ok(Weight { data: WeightData::Owned(data), shape })
    }
    /// The values as stored.
    pub fn values(&self) -> Values<'_> {
        // The mapped ranges are in bounds and aligned by construction (see `WeightData`);
        // an empty slice would only come from a broken invariant, never from user input.
        match &self.data {
            WeightData::Mapped { map, start, len } => {
                Values::F32(map.get(*start..*start + 4 * *len).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[]))
            }
            WeightData::Owned(v) => Values::F32(v),
            WeightData::Mapped16 { map, start, len, bf16 } => {
                let v: &[u16] = map.get(*start..*start + 2 * *len).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[]);
                if *bf16 {
                    Values::BF16(v)
                } else {
                    Values::F16(v)
                }
            }
        }
    }
    /// The values as f32: borrowed when stored as f32, else widened (a copy: meant for
    /// vectors, and for tests; products read 16-bit matrices in place through [`Weight::values`]).
    pub fn data(&self) -> std::borrow::Cow<'_, [f32]> {
        widen_values(self.values())
    }
    /// Row `r` of a matrix (`[rows, cols]`) as f32, widened if stored in 16 bits; `None`
    /// past the last row or for a tensor that is not a matrix.
    pub fn row(&self, r: usize) -> Option<std::borrow::Cow<'_, [f32]>> {
        let &[rows, cols] = self.shape.as_slice() else { return None };
        if r >= rows {
            return None;
        }
        self.values().get(r * cols..(r + 1) * cols).map(widen_values)
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Whether the data is used in place from the mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, WeightData::Mapped { .. } | WeightData::Mapped16 { .. })
    }
}

/// Values widened to f32 (borrowed when already f32).
fn widen_values(v: Values<'_>) -> std::borrow::Cow<'_, [f32]> {
    match v {
        Values::F32(v) => std::borrow::Cow::Borrowed(v),
        _ => {
            let mut out = vec![0.0f32; v.len()];
            v.widen_into(0, &mut out);
            std::borrow::Cow::Owned(out)
        }
    }
}

struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Byte offset of the data section.
    data_start: usize,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// The tensors of a checkpoint directory.
pub struct Checkpoint {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("files", &self.files()).field("tensors", &self.entries.len()).finish()
    }
}

impl Checkpoint {
    /// Maps `DIR/model.safetensors`, or every shard named by `DIR/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files = if index.is_file() {
            let v = read_json(&index)?;
            let f = Fields::new(&index, &v, "")?;
            let map = f.get("weight_map").ok_or_else(|| ModelError::MissingField { path: index.clone(), field: "weight_map".into() })?;
            let map = map.as_object().ok_or_else(|| f.bad("weight_map", "expected an object of tensor name to file"))?;
            let mut files: Vec<String> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| f.bad("weight_map", format!("`{name}` maps to {file}, not a file name")))?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(f.bad("weight_map", format!("`{file}` is not a file name in the model directory")));
                }
                if !files.iter().any(|x| x == file) {
                    files.push(file.to_string());
                }
            }
            files.sort();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(ModelError::MissingFile {
                path: single,
                what: "model.safetensors or model.safetensors.index.json (the weights, in safetensors format)",
            });
        };
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for path in files {
            let shard = shards.len();
            let (s, tensors) = map_shard(&path)?;
            for (name, e) in tensors {
                if entries.insert(name.clone(), Entry { shard, ..e }).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        reason: format!("tensor `{name}` is also in another shard"),
                    });
                }
            }
            shards.push(s);
        }
        Ok(Checkpoint { shards, entries })
    }

    /// The weight files.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path.clone()).collect()
    }
    /// Whether the checkpoint has a tensor.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.begin).sum()
    }

    /// The stored dtype, bytes and byte offset of tensor `name`, checked against the shape
    /// the architecture expects; and the error maker for that tensor.
    fn locate(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8], usize, &Shard)> {
        let e = self.entries.get(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string(), files: self.files() })?;
        let shard = &self.shards[e.shard];
        if e.shape != shape {
            return Err(bad_tensor(shard, name, format!("shape {:?}, expected {shape:?}", e.shape)));
        }
        let (begin, end) = (shard.data_start + e.begin, shard.data_start + e.end);
        let bytes = shard.map.get(begin..end).ok_or_else(|| bad_tensor(shard, name, "data offsets run past the end of the file".into()))?;
        Ok((e.dtype, bytes, begin, shard))
    }

    /// A tensor, checked against the shape the architecture expects: f32 tensors and
    /// f16/bf16 matrices in place from the mapping where aligned, anything else widened
    /// to f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let (dtype, bytes, begin, shard) = self.locate(name, shape)?;
        let le = cfg!(target_endian = "little");
        if dtype == Dtype::F32 && le && bytemuck::try_cast_slice::<u8, f32>(bytes).is_ok() {
            return Ok(Weight {
                data: WeightData::Mapped { map: Arc::clone(&shard.map), start: begin, len: bytes.len() / 4 },
                shape: shape.to_vec(),
            });
        }
        let half = matches!(dtype, Dtype::F16 | Dtype::BF16);
        if half && shape.len() == 2 && le && bytemuck::try_cast_slice::<u8, u16>(bytes).is_ok() {
            return Ok(Weight {
                data: WeightData::Mapped16 { map: Arc::clone(&shard.map), start: begin, len: bytes.len() / 2, bf16: dtype == Dtype::BF16 },
                shape: shape.to_vec(),
            });
        }
        Ok(Weight { data: WeightData::Owned(to_f32(dtype, bytes, shard, name)?), shape: shape.to_vec() })
    }

    /// A tensor's bytes converted to `dtype` storage (f32, f16 or bf16, little-endian),
    /// checked against the expected shape: what the GPU uploads (no f32 copy on the way).
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: rocmforge_dsl::DType) -> Result<Vec<u8>> {
        use rocmforge_dsl::DType as D;
        let (stored, bytes, _, shard) = self.locate(name, shape)?;
        if matches!((stored, dtype), (Dtype::F32, D::F32) | (Dtype::F16, D::F16) | (Dtype::BF16, D::BF16)) {
            let mut out = Vec::new();
            out.try_reserve_exact(bytes.len()).map_err(|_| ModelError::OutOfMemory { bytes: bytes.len(), what: "weights" })?;
            out.extend_from_slice(bytes);
            return Ok(out);
        }
        Ok(encode(&to_f32(stored, bytes, shard, name)?, dtype))
    }
}

fn bad_tensor(shard: &Shard, name: &str, reason: String) -> ModelError {
    ModelError::BadTensor { path: shard.path.clone(), name: name.to_string(), reason }
}

/// Stored values widened to f32.
fn to_f32(dtype: Dtype, bytes: &[u8], shard: &Shard, name: &str) -> Result<Vec<f32>> {
    match dtype {
        Dtype::F32 => widen(bytes, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F16 => widen(bytes, 2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => widen(bytes, 2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => Err(bad_tensor(shard, name, format!("dtype {other:?} is not supported (F32, F16, BF16)"))),
    }
}

/// f32 values as `dtype` storage bytes (little-endian), rounding to nearest even.
pub fn encode(v: &[f32], dtype: rocmforge_dsl::DType) -> Vec<u8> {
    use rocmforge_dsl::DType as D;
    match dtype {
        D::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        D::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

/// The largest magnitude among the f16 values of `bytes` (little-endian), as f32: NaN
/// where one is NaN, 0 for none. With the sign bit cleared, f16 bits order as the
/// magnitudes they encode (infinity above the finite values, NaN above infinity).
pub fn f16_max_abs(bytes: &[u8]) -> f32 {
    let bits = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7fff;
    // Sixteen running maxima over 32-byte chunks, so that the loop vectorizes (4x the
    // rate of one running maximum: about 28 GB/s on one core of a 2-core AVX2 machine).
    let mut lanes = [0u16; 16];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (j, m) in lanes.iter_mut().enumerate() {
            *m = (*m).max(bits(&c[2 * j..]));
        }
    }
    let tail = chunks.remainder().chunks_exact(2).map(bits);
    let max = lanes.into_iter().chain(tail).max().unwrap_or(0);
    half::f16::from_bits(max).to_f32()
}

fn widen(bytes: &[u8], size: usize, f: impl Fn(&[u8]) -> f32) -> Result<Vec<f32>> {
    let n = bytes.len() / size;
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| ModelError::OutOfMemory { bytes: n * 4, what: "weights" })?;
    out.extend(bytes.chunks_exact(size).map(f));
    Ok(out)
}

fn map_shard(path: &Path) -> Result<(Shard, Vec<(String, Entry)>)> {
    let file = File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            ModelError::MissingFile { path: path.to_path_buf(), what: "every shard named in model.safetensors.index.json" }
        }
        _ => ModelError::Io { path: path.to_path_buf(), source },
    })?;
    // SAFETY: the file is opened read-only and mapped privately; the mapping stays valid as
    // long as the `Mmap` lives (it is kept in an `Arc` by every weight that borrows from it).
    // As with every mmap-based loader (candle, safetensors), a checkpoint must not be
    // truncated or rewritten by another process while it is loaded.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let (header, meta) =
        SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    let data_start = 8 + header;
    let entries = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (begin, end) = info.data_offsets;
            (name, Entry { shard: 0, dtype: info.dtype, shape: info.shape.clone(), begin, end })
        })
        .collect();
    Ok((Shard { path: path.to_path_buf(), map: Arc::new(map), data_start }, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_max_abs_is_the_largest_magnitude() {
        let enc = |v: &[f32]| encode(v, rocmforge_dsl::DType::F16);
        assert_eq!(f16_max_abs(&enc(&[0.25, -3.5, 1.0, 6e-8])), 3.5);
        assert_eq!(f16_max_abs(&enc(&[-65504.0, 2.0])), 65504.0);
        assert_eq!(f16_max_abs(&enc(&[-0.0, 6e-8])), half::f16::from_f32(6e-8).to_f32());
        assert_eq!(f16_max_abs(&enc(&[1.0, f32::NEG_INFINITY])), f32::INFINITY);
        assert!(f16_max_abs(&enc(&[1.0, f32::INFINITY, f32::NAN])).is_nan());
        assert_eq!(f16_max_abs(&[]), 0.0);
        // Past one 32-byte chunk, the largest in the chunks, then in the tail.
        let mut v: Vec<f32> = (0..37).map(|i| i as f32 / 64.0).collect();
        assert_eq!(f16_max_abs(&enc(&v)), 36.0 / 64.0);
        v[5] = -9.0;
        assert_eq!(f16_max_abs(&enc(&v)), 9.0);
        v[36] = 11.0;
        assert_eq!(f16_max_abs(&enc(&v)), 11.0);
    }
}
