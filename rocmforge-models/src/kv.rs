//! A paged KV cache: a pool of fixed-size blocks with a free list, and per-sequence block
//! tables. A sequence holds its blocks until it is released; exhausting the pool is a
//! typed error that leaves the sequence and the pool as they were.

use crate::error::try_vec;

/// Why the cache cannot serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// Not enough free blocks for the tokens asked for.
    #[error(
        "KV cache exhausted: {needed} more blocks of {block_size} tokens are needed, {free} are free (pool of {total}); \
         end other sequences, shorten the context or give the cache more memory"
    )]
    Exhausted {
        /// Blocks the request needs.
        needed: usize,
        /// Blocks free.
        free: usize,
        /// Blocks in the pool.
        total: usize,
        /// Tokens per block.
        block_size: usize,
    },
    /// The pool's shape is unusable (zero sizes or a size that overflows).
    #[error("KV cache: {0}")]
    Shape(String),
    /// The host could not allocate the pool.
    #[error("KV cache: out of host memory allocating {bytes} bytes")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
}

/// Shape of a KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Decoder layers.
    pub layers: usize,
    /// Floats per token per layer for K (and for V): kv_heads x head_dim.
    pub kv_dim: usize,
    /// Tokens per block (16 or 32 on the GPU).
    pub block_size: usize,
    /// Blocks in the pool.
    pub blocks: usize,
}

/// A sequence's block table. Not `Clone`: each block has exactly one owner, and the only
/// way to end a sequence is [`KvPool::release`], which returns its blocks.
#[derive(Debug, Default)]
pub struct KvSeq {
    blocks: Vec<u32>,
    len: usize,
}

impl KvSeq {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The block table.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
}

/// The block pool: K and V for every layer, block-major.
#[derive(Debug)]
pub struct KvPool {
    shape: KvShape,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    free: Vec<u32>,
}

impl KvPool {
    /// Allocates the pool.
    pub fn new(shape: KvShape) -> Result<Self, KvError> {
        if shape.layers == 0 || shape.kv_dim == 0 || shape.block_size == 0 || shape.blocks == 0 {
            return Err(KvError::Shape(format!("every size must be positive: {shape:?}")));
        }
        if shape.blocks > u32::MAX as usize {
            return Err(KvError::Shape(format!("{} blocks exceed the block-id range", shape.blocks)));
        }
        let per_layer = shape
            .blocks
            .checked_mul(shape.block_size)
            .and_then(|n| n.checked_mul(shape.kv_dim))
            .ok_or_else(|| KvError::Shape(format!("{shape:?} overflows")))?;
        let mut k = Vec::with_capacity(shape.layers);
        let mut v = Vec::with_capacity(shape.layers);
        for _ in 0..shape.layers {
            let oom = |_| KvError::OutOfMemory { bytes: per_layer.saturating_mul(4 * 2 * shape.layers) };
            k.push(try_vec(per_layer, 0.0f32, "KV cache").map_err(oom)?);
            v.push(try_vec(per_layer, 0.0f32, "KV cache").map_err(oom)?);
        }
        // Popped from the back: block 0 is handed out first.
        let free = (0..shape.blocks as u32).rev().collect();
        Ok(KvPool { shape, k, v, free })
    }

    /// The pool's shape.
    pub fn shape(&self) -> KvShape {
        self.shape
    }
    /// Blocks free now.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }
    /// Tokens the pool holds in all.
    pub fn capacity_tokens(&self) -> usize {
        self.shape.blocks * self.shape.block_size
    }

    /// Starts an empty sequence (it owns no blocks yet).
    pub fn new_sequence(&self) -> KvSeq {
        KvSeq::default()
    }

    /// Makes room for `new_tokens` more tokens of `seq`; all or nothing.
    pub fn reserve(&mut self, seq: &mut KvSeq, new_tokens: usize) -> Result<(), KvError> {
        let bs = self.shape.block_size;
        let want = (seq.len.saturating_add(new_tokens)).div_ceil(bs);
        let needed = want.saturating_sub(seq.blocks.len());
        if needed > self.free.len() {
            return Err(KvError::Exhausted { needed, free: self.free.len(), total: self.shape.blocks, block_size: bs });
        }
        let at = self.free.len() - needed;
        seq.blocks.extend(self.free.drain(at..).rev());
        Ok(())
    }

    /// Marks `n` reserved tokens as written (after every layer has stored them).
    pub fn commit(&mut self, seq: &mut KvSeq, n: usize) -> Result<(), KvError> {
        let len = seq.len.saturating_add(n);
        if len > seq.blocks.len() * self.shape.block_size {
            return Err(KvError::Shape(format!("commit of {n} tokens past the {} reserved", seq.blocks.len() * self.shape.block_size)));
        }
        seq.len = len;
        Ok(())
    }

    /// Returns the blocks `seq` reserved past its committed tokens (undoes [`KvPool::reserve`]).
    pub fn trim(&mut self, seq: &mut KvSeq) {
        let keep = seq.len.div_ceil(self.shape.block_size);
        while seq.blocks.len() > keep {
            if let Some(b) = seq.blocks.pop() {
                self.free.push(b);
            }
        }
    }

    /// Keeps the first `len` tokens of `seq` (all of them where it holds fewer) and
    /// returns the blocks past them to the pool: a conversation that rewrites its tail
    /// keeps the cached prefix. The kept tokens' K and V are untouched.
    pub fn truncate(&mut self, seq: &mut KvSeq, len: usize) {
        seq.len = seq.len.min(len);
        self.trim(seq);
    }

    /// A pool that only hands out block ids: the data lives elsewhere (the GPU cache).
    pub fn index_only(shape: KvShape) -> Result<Self, KvError> {
        if shape.layers == 0 || shape.kv_dim == 0 || shape.block_size == 0 || shape.blocks == 0 {
            return Err(KvError::Shape(format!("every size must be positive: {shape:?}")));
        }
        if shape.blocks > i32::MAX as usize {
            return Err(KvError::Shape(format!("{} blocks exceed the block-id range", shape.blocks)));
        }
        let free = (0..shape.blocks as u32).rev().collect();
        Ok(KvPool { shape, k: Vec::new(), v: Vec::new(), free })
    }

    /// Ends a sequence: its blocks return to the pool.
    pub fn release(&mut self, seq: KvSeq) {
        self.free.extend(seq.blocks.into_iter().rev());
    }

    /// Float offset of token `pos` of `seq` in a layer's K or V array.
    fn slot(&self, seq: &KvSeq, pos: usize) -> Option<usize> {
        let bs = self.shape.block_size;
        let block = *seq.blocks.get(pos / bs)? as usize;
        Some((block * bs + pos % bs) * self.shape.kv_dim)
    }

    /// Stores K and V of token `pos` (reserved, not necessarily committed) in `layer`.
    pub fn write(&mut self, seq: &KvSeq, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        let d = self.shape.kv_dim;
        let at = self.slot(seq, pos).ok_or_else(|| KvError::Shape(format!("position {pos} is not reserved")))?;
        if k.len() != d || v.len() != d || layer >= self.shape.layers {
            return Err(KvError::Shape(format!("write of {}/{} floats to layer {layer}; expected {d} per token", k.len(), v.len())));
        }
        let (Some(kl), Some(vl)) = (self.k.get_mut(layer), self.v.get_mut(layer)) else {
            return Err(KvError::Shape("this pool only indexes blocks; its data is on the GPU".into()));
        };
        kl[at..at + d].copy_from_slice(k);
        vl[at..at + d].copy_from_slice(v);
        Ok(())
    }

    /// K and V of token `pos` in `layer` (`kv_dim` floats each), if reserved.
    pub fn read(&self, seq: &KvSeq, layer: usize, pos: usize) -> Option<(&[f32], &[f32])> {
        let d = self.shape.kv_dim;
        let at = self.slot(seq, pos)?;
        Some((self.k.get(layer)?.get(at..at + d)?, self.v.get(layer)?.get(at..at + d)?))
    }
}
