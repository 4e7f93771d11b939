//! Element types a kernel parameter can have.

use std::fmt;

/// Element type of a tensor or scalar parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U32];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name used in declarations and symbol names (`f32`, `bf16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
        }
    }

    /// Parses a declaration name.
    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Whether values of this dtype are floating point (computed in f32).
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The C++ storage type in generated code.
    pub const fn c_storage(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F16 | DType::BF16 => "unsigned short",
            DType::I32 => "int",
            DType::U32 => "unsigned int",
        }
    }

    /// Expression converting a stored value `v` to its compute type.
    pub fn c_load(self, v: &str) -> String {
        match self {
            DType::F32 | DType::I32 | DType::U32 => v.to_string(),
            DType::F16 => format!("rf_f16_to_f32({v})"),
            DType::BF16 => format!("rf_bf16_to_f32({v})"),
        }
    }

    /// Expression converting a compute value `v` to the stored type.
    pub fn c_store(self, v: &str) -> String {
        match self {
            DType::F32 | DType::I32 | DType::U32 => v.to_string(),
            DType::F16 => format!("rf_f32_to_f16({v})"),
            DType::BF16 => format!("rf_f32_to_bf16({v})"),
        }
    }

    /// Rounds an f32 to the nearest value of this (float) dtype, as a store does.
    pub fn round_f32(self, v: f32) -> f32 {
        match self {
            DType::F16 => half::f16::from_f32(v).to_f32(),
            DType::BF16 => half::bf16::from_f32(v).to_f32(),
            DType::F32 | DType::I32 | DType::U32 => v,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
