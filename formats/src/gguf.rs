//! The one GGUF reader and validator of inhouse.
//!
//! It serves the model store (import), the daemon's pre-load check and the toolchain's `inspect`
//! command, so every GGUF rule lives here once. It reads the header, the key-value metadata and
//! the tensor infos of a GGUF v2 or v3 little-endian file through a buffered reader, and never
//! reads the tensor data: a multi-gigabyte model costs a few megabytes of metadata to check.
//!
//! The input is treated as hostile. The file length is known up front and every length read from
//! the file is checked against it (and against a named cap) *before* anything is allocated for it;
//! all arithmetic on values from the file is checked; nothing here panics or uses `unsafe`. When a
//! rule is broken the parse stops with a [`GgufError`] that names the key or tensor at fault.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, dims: n_dims × u64, ggml_type: u32, offset: u64)
//! padding to `general.alignment` | tensor data (offsets are relative to its start)
//! string = len: u64, len bytes of UTF-8;  array = elem_type: u32, len: u64, len × elem
//! ```
//!
//! Where this reader is stricter than the llama.cpp it guards (zero dimensions, zero-dimensional
//! tensors, boolean bytes other than 0/1, control characters in names, overlapping tensors, the
//! caps below), the aim is to refuse files that no honest writer produces before llama.cpp sees
//! them.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Most tensors a file may declare. Real models have a few thousand; the cap keeps a forged count
/// from driving a long loop before the file length runs out.
pub const MAX_TENSORS: u64 = 1 << 20;

/// Most key-value pairs a file may declare. Real models have a few dozen.
pub const MAX_KVS: u64 = 1 << 16;

/// Longest key, in bytes, as the GGUF specification allows.
pub const MAX_KEY_LEN: u64 = 65_535;

/// Longest string value or string array element, in bytes, except for the keys that
/// [`MAX_LONG_STRING_LEN`] covers.
pub const MAX_STRING_LEN: u64 = 1 << 20;

/// Longest string value for the keys that legitimately hold whole documents: chat templates
/// (`tokenizer.chat_template` and its named variants) and an embedded `tokenizer.huggingface.json`.
pub const MAX_LONG_STRING_LEN: u64 = 64 << 20;

/// Most elements in one array (a 262k-token vocabulary is about 1/64 of it).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;

/// Longest tensor name in bytes: ggml stores names in a 64-byte buffer with a terminating NUL.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;

/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Most memory the decoded metadata (keys, values, tensor infos) may take. Checking lengths against
/// the file size bounds what one value can ask for, but an in-memory `String` or `Vec` costs more
/// than its bytes on disk, so a hostile multi-gigabyte file could still ask for several times its
/// size; this budget caps the total. Real models need well under 64 MiB.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Alignment of the data section and of every tensor offset when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Key that overrides [`DEFAULT_ALIGNMENT`]; it must be a `u32` holding a nonzero power of two.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// What went wrong while opening or validating a GGUF file. Each message names the offending key,
/// tensor or byte offset so that an operator can act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or its length read.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path given to [`open`].
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The path names a directory, device or other non-regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path given to [`open`].
        path: PathBuf,
    },
    /// Reading failed for a reason other than the file ending early.
    #[error("I/O error while reading {what} at byte {offset}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// Where in the file.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// Something the header promises does not fit in the rest of the file.
    #[error(
        "file is truncated: {what} at byte {offset} needs at least {needed} bytes, \
         but the file ends at byte {file_size}"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs at least (u128: a forged count times an element size may
        /// not fit u64).
        needed: u128,
        /// The length of the file.
        file_size: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with \"{}\", expected \"GGUF\"", found.escape_ascii())]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A version other than 2 or 3 (version 1 used 32-bit counts and is obsolete).
    #[error("unsupported GGUF version {version}: only versions 2 and 3 are supported")]
    UnsupportedVersion {
        /// The version read.
        version: u32,
    },
    /// The version reads as 2 or 3 byte-swapped: a big-endian file.
    #[error(
        "big-endian GGUF file (version field {version:#010x}): \
         only little-endian files are supported"
    )]
    BigEndian {
        /// The version read as little-endian.
        version: u32,
    },
    /// The tensor count is above [`MAX_TENSORS`].
    #[error("tensor count {count} exceeds the limit of {max}")]
    TooManyTensors {
        /// The count in the header.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// The key-value count is above [`MAX_KVS`].
    #[error("key-value count {count} exceeds the limit of {max}")]
    TooManyKvs {
        /// The count in the header.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// A key or string value is longer than its cap.
    #[error("{what}: string length {len} exceeds the limit of {max} bytes")]
    StringTooLong {
        /// Which string.
        what: String,
        /// The length read.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A key or tensor name is not valid UTF-8 (string values are decoded leniently instead).
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: String,
    },
    /// A key or tensor name contains control characters. Names end up in messages, logs and
    /// terminals, so escape sequences and line breaks are refused rather than passed on.
    #[error("{what} contains control characters: {escaped}")]
    ControlCharacters {
        /// Which name.
        what: String,
        /// The name with its control characters escaped.
        escaped: String,
    },
    /// A key is the empty string.
    #[error("key-value pair {index} has an empty key")]
    EmptyKey {
        /// Position of the pair, from 0.
        index: u64,
    },
    /// The same key appears twice.
    #[error("duplicate key '{key}'")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A value or array element type id outside 0..=12.
    #[error("key '{key}': unknown value type id {type_id}")]
    UnknownValueType {
        /// The key whose value has the bad type.
        key: String,
        /// The id read.
        type_id: u32,
    },
    /// An array is longer than [`MAX_ARRAY_LEN`].
    #[error("key '{key}': array length {len} exceeds the limit of {max} elements")]
    ArrayTooLong {
        /// The key.
        key: String,
        /// The length read.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// An array of arrays of arrays: only one level of nesting is accepted.
    #[error("key '{key}': arrays may be nested at most one level deep")]
    NestedArrayTooDeep {
        /// The key.
        key: String,
    },
    /// A boolean stored as a byte other than 0 or 1.
    #[error("key '{key}': boolean byte {value} is neither 0 nor 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte read.
        value: u8,
    },
    /// The decoded metadata would take more than [`MAX_METADATA_BYTES`] of memory.
    #[error("metadata needs more than {max} bytes of memory")]
    MetadataTooLarge {
        /// The budget.
        max: u64,
    },
    /// A key with a fixed meaning has a value of the wrong type.
    #[error("key '{key}' must be of type {expected} but is {found}")]
    WrongKeyType {
        /// The key.
        key: String,
        /// The type it must have.
        expected: ValueType,
        /// The type it has.
        found: ValueType,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("{ALIGNMENT_KEY} is {alignment}, which is not a nonzero power of two")]
    BadAlignment {
        /// The value read.
        alignment: u64,
    },
    /// A tensor name is the empty string.
    #[error("tensor {index} has an empty name")]
    EmptyTensorName {
        /// Position of the tensor, from 0.
        index: u64,
    },
    /// A tensor name is longer than [`MAX_TENSOR_NAME_LEN`].
    #[error("tensor {index}: name is {len} bytes long, the limit is {max}")]
    TensorNameTooLong {
        /// Position of the tensor, from 0.
        index: u64,
        /// The length read.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// Two tensors share a name.
    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor with 0 or more than [`MAX_DIMS`] dimensions.
    #[error("tensor '{tensor}': {n_dims} dimensions, expected 1 to {MAX_DIMS}")]
    BadDimCount {
        /// The tensor name.
        tensor: String,
        /// The count read.
        n_dims: u32,
    },
    /// A dimension of size zero.
    #[error("tensor '{tensor}': dimension {axis} is zero")]
    ZeroDim {
        /// The tensor name.
        tensor: String,
        /// Which dimension, from 0.
        axis: usize,
    },
    /// The element count does not fit the signed 64-bit integers ggml uses.
    #[error("tensor '{tensor}': shape {dims:?} has more elements than ggml can count (i64::MAX)")]
    ShapeOverflow {
        /// The tensor name.
        tensor: String,
        /// The dimensions read.
        dims: Vec<u64>,
    },
    /// A tensor type id this reader (and the bundled ggml) does not know.
    #[error("tensor '{tensor}': unknown ggml type id {type_id}")]
    UnknownTensorType {
        /// The tensor name.
        tensor: String,
        /// The id read.
        type_id: u32,
    },
    /// The first dimension is not a whole number of quantization blocks.
    #[error(
        "tensor '{tensor}': first dimension {ne0} is not a multiple of \
         the {ggml_type} block size {block_size}"
    )]
    NotBlockMultiple {
        /// The tensor name.
        tensor: String,
        /// The tensor type.
        ggml_type: GgmlType,
        /// The first dimension.
        ne0: u64,
        /// The type's block size.
        block_size: u64,
    },
    /// A tensor offset is not a multiple of the alignment.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// The tensor name.
        tensor: String,
        /// The offset read (relative to the data section).
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data runs past the end of the file.
    #[error(
        "tensor '{tensor}': data ends at byte {end}, past the end of the file ({file_size} bytes)"
    )]
    TensorPastEnd {
        /// The tensor name.
        tensor: String,
        /// Absolute end of its data (u128: a forged offset plus size may not fit u64).
        end: u128,
        /// The length of the file.
        file_size: u64,
    },
    /// A tensor's data is larger than the whole file.
    #[error(
        "tensor '{tensor}': data of {n_bytes} bytes is larger than the whole file \
         ({file_size} bytes)"
    )]
    TensorTooLarge {
        /// The tensor name.
        tensor: String,
        /// Size of its data (u128: a forged shape may not fit u64).
        n_bytes: u128,
        /// The length of the file.
        file_size: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("tensors '{first}' and '{second}' overlap in the data section")]
    TensorsOverlap {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
    /// The aligned start of the data section is past the end of the file.
    #[error(
        "the data section starts at byte {data_offset}, past the end of the file \
         ({file_size} bytes)"
    )]
    DataPastEnd {
        /// Where the data section starts.
        data_offset: u64,
        /// The length of the file.
        file_size: u64,
    },
}

/// The type of a metadata value, with the ids GGUF stores on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// id 0
    U8,
    /// id 1
    I8,
    /// id 2
    U16,
    /// id 3
    I16,
    /// id 4
    U32,
    /// id 5
    I32,
    /// id 6
    F32,
    /// id 7: one byte, 0 or 1
    Bool,
    /// id 8: u64 length + UTF-8 bytes
    String,
    /// id 9: element type u32 + u64 length + elements
    Array,
    /// id 10
    U64,
    /// id 11
    I64,
    /// id 12
    F64,
}

impl ValueType {
    /// The type for an on-disk id, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// A short lowercase name (`u32`, `string`, …) for messages and `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }

    /// Bytes one element takes on disk: exact for fixed-size types, the smallest possible
    /// encoding for strings (the length prefix) and arrays (type id and length).
    fn min_encoded_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An unsigned byte.
    U8(u8),
    /// A signed byte.
    I8(i8),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 32-bit integer.
    I32(i32),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 32-bit float.
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string. Invalid UTF-8 is replaced with U+FFFD rather than refused: llama.cpp accepts any
    /// bytes here, and refusing would turn away models it can load.
    String(String),
    /// An array.
    Array(Array),
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F32(_) => ValueType::F32,
            Self::F64(_) => ValueType::F64,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
        }
    }

    /// The value as a `u64` if it is an integer of any width and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string slice if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array if it is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// An array value, stored by element type. Typed vectors keep a 262k-entry score table at 4 bytes
/// an entry instead of the size of a [`Value`], which matters for the memory budget.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// Elements of type u8.
    U8(Vec<u8>),
    /// Elements of type i8.
    I8(Vec<i8>),
    /// Elements of type u16.
    U16(Vec<u16>),
    /// Elements of type i16.
    I16(Vec<i16>),
    /// Elements of type u32.
    U32(Vec<u32>),
    /// Elements of type i32.
    I32(Vec<i32>),
    /// Elements of type u64.
    U64(Vec<u64>),
    /// Elements of type i64.
    I64(Vec<i64>),
    /// Elements of type f32.
    F32(Vec<f32>),
    /// Elements of type f64.
    F64(Vec<f64>),
    /// Elements of type bool.
    Bool(Vec<bool>),
    /// Elements of type string (decoded like [`Value::String`]).
    String(Vec<String>),
    /// Elements that are arrays themselves; these inner arrays never hold arrays.
    Array(Vec<Array>),
}

impl Array {
    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F32(_) => ValueType::F32,
            Self::F64(_) => ValueType::F64,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (cloned), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Self::U8(v) => Value::U8(*v.get(i)?),
            Self::I8(v) => Value::I8(*v.get(i)?),
            Self::U16(v) => Value::U16(*v.get(i)?),
            Self::I16(v) => Value::I16(*v.get(i)?),
            Self::U32(v) => Value::U32(*v.get(i)?),
            Self::I32(v) => Value::I32(*v.get(i)?),
            Self::U64(v) => Value::U64(*v.get(i)?),
            Self::I64(v) => Value::I64(*v.get(i)?),
            Self::F32(v) => Value::F32(*v.get(i)?),
            Self::F64(v) => Value::F64(*v.get(i)?),
            Self::Bool(v) => Value::Bool(*v.get(i)?),
            Self::String(v) => Value::String(v.get(i)?.clone()),
            Self::Array(v) => Value::Array(v.get(i)?.clone()),
        })
    }
}

/// A ggml tensor type: the element encoding of a tensor's data.
///
/// The set is the one the bundled llama.cpp (llama-cpp-sys-2 0.1.161) accepts in GGUF files; ids
/// 4, 5 and 31..=33, 36..=38 were removed from ggml and are refused like any unknown id.
#[allow(non_camel_case_types)] // the names are ggml's, so they can be searched for
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 4-bit, blocks of 32 with an f16 scale.
    Q4_0,
    /// 4-bit, blocks of 32 with f16 scale and minimum.
    Q4_1,
    /// 5-bit, blocks of 32 with an f16 scale.
    Q5_0,
    /// 5-bit, blocks of 32 with f16 scale and minimum.
    Q5_1,
    /// 8-bit, blocks of 32 with an f16 scale.
    Q8_0,
    /// 8-bit, blocks of 32 with f16 scale and sum.
    Q8_1,
    /// 2-bit k-quant, super-blocks of 256.
    Q2_K,
    /// 3-bit k-quant, super-blocks of 256.
    Q3_K,
    /// 4-bit k-quant, super-blocks of 256.
    Q4_K,
    /// 5-bit k-quant, super-blocks of 256.
    Q5_K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6_K,
    /// 8-bit k-quant, super-blocks of 256.
    Q8_K,
    /// i-quant, ~2.06 bits per weight.
    IQ2_XXS,
    /// i-quant, ~2.31 bits per weight.
    IQ2_XS,
    /// i-quant, ~3.06 bits per weight.
    IQ3_XXS,
    /// i-quant, ~1.56 bits per weight.
    IQ1_S,
    /// non-linear 4-bit, blocks of 32.
    IQ4_NL,
    /// i-quant, ~3.44 bits per weight.
    IQ3_S,
    /// i-quant, ~2.56 bits per weight.
    IQ2_S,
    /// non-linear 4-bit, super-blocks of 256.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// i-quant, ~1.75 bits per weight.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// ternary, ~1.69 bits per weight.
    TQ1_0,
    /// ternary, 2.06 bits per weight.
    TQ2_0,
    /// OCP micro-scaling FP4, blocks of 32 with an E8M0 exponent.
    MXFP4,
    /// NVIDIA FP4, blocks of 64 with four E4M3 scales.
    NVFP4,
    /// 1-bit, blocks of 128 with an f16 scale.
    Q1_0,
    /// 2-bit, blocks of 64 with an f16 scale.
    Q2_0,
}

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 35] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
        Self::NVFP4,
        Self::Q1_0,
        Self::Q2_0,
    ];

    /// The single table of type facts: (ggml id, name, elements per block, bytes per block).
    ///
    /// Block byte sizes follow the block structs of ggml-common.h; k-quants and most i-quants use
    /// super-blocks of 256 elements (`QK_K`).
    fn traits(self) -> (u32, &'static str, u64, u64) {
        match self {
            Self::F32 => (0, "F32", 1, 4),
            Self::F16 => (1, "F16", 1, 2),
            Self::Q4_0 => (2, "Q4_0", 32, 18),
            Self::Q4_1 => (3, "Q4_1", 32, 20),
            Self::Q5_0 => (6, "Q5_0", 32, 22),
            Self::Q5_1 => (7, "Q5_1", 32, 24),
            Self::Q8_0 => (8, "Q8_0", 32, 34),
            Self::Q8_1 => (9, "Q8_1", 32, 36),
            Self::Q2_K => (10, "Q2_K", 256, 84),
            Self::Q3_K => (11, "Q3_K", 256, 110),
            Self::Q4_K => (12, "Q4_K", 256, 144),
            Self::Q5_K => (13, "Q5_K", 256, 176),
            Self::Q6_K => (14, "Q6_K", 256, 210),
            Self::Q8_K => (15, "Q8_K", 256, 292),
            Self::IQ2_XXS => (16, "IQ2_XXS", 256, 66),
            Self::IQ2_XS => (17, "IQ2_XS", 256, 74),
            Self::IQ3_XXS => (18, "IQ3_XXS", 256, 98),
            Self::IQ1_S => (19, "IQ1_S", 256, 50),
            Self::IQ4_NL => (20, "IQ4_NL", 32, 18),
            Self::IQ3_S => (21, "IQ3_S", 256, 110),
            Self::IQ2_S => (22, "IQ2_S", 256, 82),
            Self::IQ4_XS => (23, "IQ4_XS", 256, 136),
            Self::I8 => (24, "I8", 1, 1),
            Self::I16 => (25, "I16", 1, 2),
            Self::I32 => (26, "I32", 1, 4),
            Self::I64 => (27, "I64", 1, 8),
            Self::F64 => (28, "F64", 1, 8),
            Self::IQ1_M => (29, "IQ1_M", 256, 56),
            Self::BF16 => (30, "BF16", 1, 2),
            Self::TQ1_0 => (34, "TQ1_0", 256, 54),
            Self::TQ2_0 => (35, "TQ2_0", 256, 66),
            Self::MXFP4 => (39, "MXFP4", 32, 17),
            Self::NVFP4 => (40, "NVFP4", 64, 36),
            Self::Q1_0 => (41, "Q1_0", 128, 18),
            Self::Q2_0 => (42, "Q2_0", 64, 18),
        }
    }

    /// The type for a ggml id, or `None` for an unknown or removed id.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// ggml's numeric id, as stored in tensor infos.
    pub fn id(self) -> u32 {
        self.traits().0
    }

    /// The name ggml's enum uses (`Q4_K`, `BF16`, …).
    pub fn name(self) -> &'static str {
        self.traits().1
    }

    /// Elements per block; a tensor's first dimension must be a multiple of it.
    pub fn block_size(self) -> u64 {
        self.traits().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.traits().3
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a `general.file_type` value (llama.cpp's `llama_ftype`, "mostly" dropped), e.g. 15
/// is `Q4_K_M`. `None` for numbers llama.cpp does not define.
pub fn file_type_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_1_SOME_F16", // removed from llama.cpp, still found in old files
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        // 33..=35 were the Q4_0_4_4/4_8/8_8 repacks, removed from GGUF files.
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        1024 => "GUESSED",
        _ => return None,
    })
}

/// One tensor's description from the header. Its data is not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (ggml's `ne`), 1 to 4 of them, each nonzero.
    pub dims: Vec<u64>,
    /// The element encoding.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section (see [`GgufFile::data_offset`]).
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The number of elements (the product of the dimensions; validated to fit in an `i64`).
    pub fn n_elements(&self) -> u64 {
        // Checked during parsing; saturating only so a hand-built TensorInfo cannot panic.
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// A validated GGUF header: metadata and tensor infos, without the tensor data.
///
/// The fields are private so that holding a `GgufFile` means the checks of [`parse`] passed.
#[derive(Debug, Clone)]
pub struct GgufFile {
    version: u32,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
    file_size: u64,
}

impl GgufFile {
    /// The GGUF version, 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All key-value pairs, in file order; keys are unique.
    pub fn kvs(&self) -> &[(String, Value)] {
        &self.kvs
    }

    /// All tensor infos, in file order; names are unique.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The alignment of the data section and of every tensor offset.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The length of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        // A linear scan: a few dozen keys, looked up a handful of times.
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// The value of `key` if it is a non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `tokenizer.chat_template`, the model's default Jinja chat template.
    pub fn chat_template(&self) -> Option<&str> {
        self.get_str("tokenizer.chat_template")
    }

    /// `{architecture}.context_length`, the context the model was trained for.
    pub fn context_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.context_length"))
    }

    /// The number of parameters: the element count summed over all tensors.
    pub fn n_params(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |acc, t| acc.saturating_add(t.n_elements()))
    }

    /// The raw `general.file_type` number, if present.
    pub fn file_type(&self) -> Option<u64> {
        self.get_u64("general.file_type")
    }

    /// The name of `general.file_type` (`Q4_K_M`, `F16`, …); `None` if absent or unknown.
    pub fn file_type_name(&self) -> Option<&'static str> {
        file_type_name(self.file_type()?)
    }

    /// The absolute file range `[start, end)` of a tensor's data.
    pub fn tensor_data_range(&self, tensor: &TensorInfo) -> (u64, u64) {
        // Checked against the file size during parsing; saturating only for foreign TensorInfos.
        let start = self.data_offset.saturating_add(tensor.offset);
        (start, start.saturating_add(tensor.n_bytes))
    }
}

/// Opens and validates the GGUF file at `path`, reading only its header.
pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
    let path = path.as_ref();
    let open_err = |source| GgufError::Open {
        path: path.to_path_buf(),
        source,
    };
    let not_a_file = || GgufError::NotAFile {
        path: path.to_path_buf(),
    };
    // Look before opening: opening a FIFO blocks until a writer appears, and a directory opens
    // fine on Linux only to fail on the first read.
    if !std::fs::metadata(path).map_err(open_err)?.is_file() {
        return Err(not_a_file());
    }
    let file = File::open(path).map_err(open_err)?;
    // Ask again through the open handle, which is what is read, in case the path was swapped.
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    // 64 KiB buffer: the metadata is read as many small fields (262k vocabulary strings).
    parse(BufReader::with_capacity(64 << 10, file), meta.len())
}

/// Validates a GGUF file read from the start of `r`, which holds `file_len` bytes.
///
/// `file_len` bounds every length in the file; bytes of `r` past it are ignored, and if `r` ends
/// before it the parse fails as truncated. Only the header is read, sequentially. For fuzzing:
/// `parse(std::io::Cursor::new(bytes), bytes.len() as u64)`.
pub fn parse<R: Read + Seek>(r: R, file_len: u64) -> Result<GgufFile, GgufError> {
    parse_with_budget(r, file_len, MAX_METADATA_BYTES)
}

/// [`parse`] with a chosen metadata memory budget, so tests can reach the limit cheaply.
fn parse_with_budget<R: Read + Seek>(
    mut r: R,
    file_len: u64,
    budget: u64,
) -> Result<GgufFile, GgufError> {
    r.seek(SeekFrom::Start(0)).map_err(|source| GgufError::Io {
        what: "the start of the file".into(),
        offset: 0,
        source,
    })?;
    let mut rd = Reader {
        inner: r,
        pos: 0,
        file_size: file_len,
        budget_left: budget,
        budget,
    };

    let magic: [u8; 4] = rd.fixed(|| "the magic bytes".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = rd.u32(|| "the version".into())?;
    match version {
        2 | 3 => {}
        // A big-endian writer stores the version byte-swapped: say so, not "version 50331648".
        v if matches!(v.swap_bytes(), 2 | 3) => return Err(GgufError::BigEndian { version: v }),
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let n_tensors = rd.u64(|| "the tensor count".into())?;
    if n_tensors > MAX_TENSORS {
        return Err(GgufError::TooManyTensors {
            count: n_tensors,
            max: MAX_TENSORS,
        });
    }
    let n_kvs = rd.u64(|| "the key-value count".into())?;
    if n_kvs > MAX_KVS {
        return Err(GgufError::TooManyKvs {
            count: n_kvs,
            max: MAX_KVS,
        });
    }

    // Key-value pairs. Capacity is bounded by what the rest of the file can hold (a key-value pair
    // takes at least 8 + 1 + 4 + 1 bytes), so a forged count allocates nothing extra.
    let mut kvs = Vec::with_capacity(rd.capacity_for(n_kvs, 14));
    for index in 0..n_kvs {
        let key = rd.key(index)?;
        let type_id = rd.u32(|| format!("the value type of key '{key}'"))?;
        let vt = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            type_id,
        })?;
        let value = rd.value(vt, &key)?;
        kvs.push((key, value));
    }
    let mut seen = HashSet::with_capacity(kvs.len());
    for (key, _) in &kvs {
        if !seen.insert(key.as_str()) {
            return Err(GgufError::DuplicateKey { key: key.clone() });
        }
    }
    drop(seen);

    let alignment = match kvs.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        // llama.cpp insists on u32 here; follow it so both agree on where the data starts.
        Some((_, Value::U32(a))) => u64::from(*a),
        Some((_, other)) => {
            return Err(GgufError::WrongKeyType {
                key: ALIGNMENT_KEY.into(),
                expected: ValueType::U32,
                found: other.value_type(),
            })
        }
    };
    if !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment { alignment });
    }

    // Tensor infos: at least 8 (name length) + 4 + 8 (one dim) + 4 + 8 bytes each.
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(rd.capacity_for(n_tensors, 32));
    for index in 0..n_tensors {
        tensors.push(rd.tensor_info(index)?);
    }
    let mut seen = HashSet::with_capacity(tensors.len());
    for t in &tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(GgufError::DuplicateTensor {
                name: t.name.clone(),
            });
        }
    }
    drop(seen);

    // The data section starts at the end of the tensor infos rounded up to the alignment.
    let data_offset = align_up(rd.pos, alignment).ok_or(GgufError::DataPastEnd {
        data_offset: u64::MAX,
        file_size: file_len,
    })?;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(GgufError::DataPastEnd {
            data_offset,
            file_size: file_len,
        });
    }
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        // u128 cannot overflow on the sum of three u64s.
        let end = u128::from(data_offset) + u128::from(t.offset) + u128::from(t.n_bytes);
        if end > u128::from(file_len) {
            return Err(GgufError::TensorPastEnd {
                tensor: t.name.clone(),
                end,
                file_size: file_len,
            });
        }
    }
    // No two tensors may share bytes. llama.cpp goes further and wants them packed in file order;
    // that is its loader's convention, not a safety property, so it is left to llama.cpp.
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if let [a, b] = pair {
            // In bounds of the file (checked above), so the sum fits u64.
            if a.offset.saturating_add(a.n_bytes) > b.offset {
                return Err(GgufError::TensorsOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }
    }
    drop(by_offset);

    Ok(GgufFile {
        version,
        kvs,
        tensors,
        alignment,
        data_offset,
        file_size: file_len,
    })
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

/// Whether `key`'s string value may exceed [`MAX_STRING_LEN`] (up to [`MAX_LONG_STRING_LEN`]).
fn allows_long_string(key: &str) -> bool {
    key == "tokenizer.chat_template"
        || key.starts_with("tokenizer.chat_template.")
        || key == "tokenizer.huggingface.json"
}

/// Decodes little-endian fixed-size elements; `bytes.len()` is a multiple of `N` by construction
/// (a trailing partial chunk, which cannot occur, would be dropped rather than panic).
fn decode<T, const N: usize>(bytes: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut a = [0u8; N];
            a.copy_from_slice(chunk);
            from_le(a)
        })
        .collect()
}

/// A position-tracking reader that knows how much of the file is left and how much memory the
/// metadata may still take. Every read checks the remaining length first.
struct Reader<R> {
    inner: R,
    /// Bytes consumed so far: the absolute file offset of the next read.
    pos: u64,
    file_size: u64,
    budget_left: u64,
    budget: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.file_size.saturating_sub(self.pos)
    }

    /// A safe `Vec` capacity for `count` items of at least `min_size` bytes each on disk.
    fn capacity_for(&self, count: u64, min_size: u64) -> usize {
        let fits = self.remaining() / min_size.max(1);
        usize::try_from(count.min(fits)).unwrap_or(0)
    }

    /// Takes `bytes` from the metadata memory budget before they are allocated.
    fn charge(&mut self, bytes: u64) -> Result<(), GgufError> {
        match self.budget_left.checked_sub(bytes) {
            Some(left) => {
                self.budget_left = left;
                Ok(())
            }
            None => Err(GgufError::MetadataTooLarge { max: self.budget }),
        }
    }

    /// Fails unless `needed` more bytes lie within the file.
    fn ensure(&self, needed: u128, what: impl FnOnce() -> String) -> Result<(), GgufError> {
        if needed > u128::from(self.remaining()) {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos,
                needed,
                file_size: self.file_size,
            });
        }
        Ok(())
    }

    /// Fills `buf` from the file; the caller has already checked that it fits.
    fn fill(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), GgufError> {
        let len = buf.len() as u64;
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += len; // cannot overflow: len <= remaining
                Ok(())
            }
            // The stream is shorter than the length we were told: the file is truncated.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(GgufError::Truncated {
                what: what(),
                offset: self.pos,
                needed: len.into(),
                file_size: self.file_size,
            }),
            Err(source) => Err(GgufError::Io {
                what: what(),
                offset: self.pos,
                source,
            }),
        }
    }

    fn fixed<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N], GgufError> {
        self.ensure(N as u128, &what)?;
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u8(&mut self, what: impl Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.fixed::<1>(what)?[0])
    }

    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32, GgufError> {
        self.fixed(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64, GgufError> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    /// Reads `len` bytes into a new vector after checking them against the file and the budget.
    fn bytes(&mut self, len: u64, what: impl Fn() -> String) -> Result<Vec<u8>, GgufError> {
        self.ensure(len.into(), &what)?;
        self.charge(len)?;
        // len <= remaining file length, and the file length came from the filesystem, so on a
        // 64-bit target the conversion holds; on 32-bit a huge length fails here cleanly.
        let n =
            usize::try_from(len).map_err(|_| GgufError::MetadataTooLarge { max: self.budget })?;
        let mut buf = vec![0u8; n];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    /// Reads a length-prefixed string of at most `max` bytes, as raw bytes.
    fn string_bytes(&mut self, max: u64, what: impl Fn() -> String) -> Result<Vec<u8>, GgufError> {
        let len = self.u64(|| format!("the length of {}", what()))?;
        if len > max {
            return Err(GgufError::StringTooLong {
                what: what(),
                len,
                max,
            });
        }
        // Account for the String header as well as its bytes.
        self.charge(std::mem::size_of::<String>() as u64)?;
        self.bytes(len, what)
    }

    /// Reads a string value, replacing invalid UTF-8 (see [`Value::String`]).
    fn string_value(&mut self, max: u64, what: impl Fn() -> String) -> Result<String, GgufError> {
        let bytes = self.string_bytes(max, what)?;
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Reads a key: non-empty, at most [`MAX_KEY_LEN`] bytes, strict UTF-8.
    fn key(&mut self, index: u64) -> Result<String, GgufError> {
        let what = || format!("the key of key-value pair {index}");
        let bytes = self.string_bytes(MAX_KEY_LEN, what)?;
        if bytes.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        let key = String::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what() })?;
        check_no_control(&key, what)?;
        Ok(key)
    }

    fn value(&mut self, vt: ValueType, key: &str) -> Result<Value, GgufError> {
        let what = || format!("the value of key '{key}'");
        Ok(match vt {
            ValueType::U8 => Value::U8(self.u8(what)?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.fixed(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.fixed(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.fixed(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.fixed(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.fixed(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.fixed(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.fixed(what)?)),
            ValueType::Bool => Value::Bool(bool_from(self.u8(what)?, key)?),
            ValueType::String => {
                let max = if allows_long_string(key) {
                    MAX_LONG_STRING_LEN
                } else {
                    MAX_STRING_LEN
                };
                Value::String(self.string_value(max, what)?)
            }
            ValueType::Array => Value::Array(self.array(key, false)?),
        })
    }

    /// Reads an array (element type, length, elements). `inner` is set for the elements of an
    /// array of arrays, which may not themselves hold arrays.
    fn array(&mut self, key: &str, inner: bool) -> Result<Array, GgufError> {
        let type_id = self.u32(|| format!("the element type of array '{key}'"))?;
        let et = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.into(),
            type_id,
        })?;
        if inner && et == ValueType::Array {
            return Err(GgufError::NestedArrayTooDeep { key: key.into() });
        }
        let len = self.u64(|| format!("the length of array '{key}'"))?;
        if len > MAX_ARRAY_LEN {
            return Err(GgufError::ArrayTooLong {
                key: key.into(),
                len,
                max: MAX_ARRAY_LEN,
            });
        }
        let what = || format!("the {len} {et} elements of array '{key}'");
        // Every element takes at least this many bytes on disk: check the whole array against the
        // rest of the file before allocating anything for it.
        let min_bytes = u128::from(len) * u128::from(et.min_encoded_size());
        self.ensure(min_bytes, what)?;
        // For fixed-size elements min_bytes is the exact size, and it fits u64 because it is
        // within the remaining file length (checked just above).
        let exact = u64::try_from(min_bytes).unwrap_or(u64::MAX);
        Ok(match et {
            ValueType::U8 => Array::U8(self.bytes(exact, what)?),
            ValueType::I8 => Array::I8(decode(&self.bytes(exact, what)?, i8::from_le_bytes)),
            ValueType::U16 => Array::U16(decode(&self.bytes(exact, what)?, u16::from_le_bytes)),
            ValueType::I16 => Array::I16(decode(&self.bytes(exact, what)?, i16::from_le_bytes)),
            ValueType::U32 => Array::U32(decode(&self.bytes(exact, what)?, u32::from_le_bytes)),
            ValueType::I32 => Array::I32(decode(&self.bytes(exact, what)?, i32::from_le_bytes)),
            ValueType::U64 => Array::U64(decode(&self.bytes(exact, what)?, u64::from_le_bytes)),
            ValueType::I64 => Array::I64(decode(&self.bytes(exact, what)?, i64::from_le_bytes)),
            ValueType::F32 => Array::F32(decode(&self.bytes(exact, what)?, f32::from_le_bytes)),
            ValueType::F64 => Array::F64(decode(&self.bytes(exact, what)?, f64::from_le_bytes)),
            ValueType::Bool => {
                let raw = self.bytes(exact, what)?;
                Array::Bool(
                    raw.into_iter()
                        .map(|b| bool_from(b, key))
                        .collect::<Result<_, _>>()?,
                )
            }
            ValueType::String => {
                // len fits the remaining file (8 bytes per element), so the capacity is bounded.
                let mut items = Vec::with_capacity(self.capacity_for(len, 8));
                for i in 0..len {
                    items.push(self.string_value(MAX_STRING_LEN, || {
                        format!("element {i} of array '{key}'")
                    })?);
                }
                Array::String(items)
            }
            ValueType::Array => {
                let mut items = Vec::with_capacity(self.capacity_for(len, 12));
                for _ in 0..len {
                    self.charge(std::mem::size_of::<Array>() as u64)?;
                    items.push(self.array(key, true)?);
                }
                Array::Array(items)
            }
        })
    }

    /// Reads one tensor info and checks everything that does not depend on the data offset.
    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo, GgufError> {
        let name_len = self.u64(|| format!("the name length of tensor {index}"))?;
        if name_len > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                index,
                len: name_len,
                max: MAX_TENSOR_NAME_LEN,
            });
        }
        if name_len == 0 {
            return Err(GgufError::EmptyTensorName { index });
        }
        self.charge((std::mem::size_of::<TensorInfo>() + std::mem::size_of::<u64>() * 4) as u64)?;
        let raw = self.bytes(name_len, || format!("the name of tensor {index}"))?;
        let name = String::from_utf8(raw).map_err(|_| GgufError::InvalidUtf8 {
            what: format!("the name of tensor {index}"),
        })?;
        check_no_control(&name, || format!("the name of tensor {index}"))?;

        let n_dims = self.u32(|| format!("the dimension count of tensor '{name}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(MAX_DIMS as usize);
        for axis in 0..n_dims {
            dims.push(self.u64(|| format!("dimension {axis} of tensor '{name}'"))?);
        }
        let type_id = self.u32(|| format!("the type of tensor '{name}'"))?;
        let offset = self.u64(|| format!("the data offset of tensor '{name}'"))?;

        if let Some(axis) = dims.iter().position(|&d| d == 0) {
            return Err(GgufError::ZeroDim { tensor: name, axis });
        }
        // ggml counts elements in i64: the product must stay below i64::MAX.
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok());
        let Some(n_elements) = n_elements else {
            return Err(GgufError::ShapeOverflow { tensor: name, dims });
        };
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType {
                tensor: name,
                type_id,
            });
        };
        let block_size = ggml_type.block_size();
        let ne0 = dims[0]; // n_dims >= 1 was checked above
        if ne0 % block_size != 0 {
            return Err(GgufError::NotBlockMultiple {
                tensor: name,
                ggml_type,
                ne0,
                block_size,
            });
        }
        // ne0 is a multiple of the block size, so n_elements is too. u128 cannot overflow here
        // (fewer than 2^63 elements times at most a few hundred bytes per block).
        let size = u128::from(n_elements / block_size) * u128::from(ggml_type.type_size());
        // A tensor bigger than the whole file cannot be in it; refusing it here also keeps
        // n_bytes within u64.
        let n_bytes = match u64::try_from(size) {
            Ok(n) if n <= self.file_size => n,
            _ => {
                return Err(GgufError::TensorTooLarge {
                    tensor: name,
                    n_bytes: size,
                    file_size: self.file_size,
                })
            }
        };
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }
}

/// Refuses names with control characters (see [`GgufError::ControlCharacters`]).
fn check_no_control(name: &str, what: impl FnOnce() -> String) -> Result<(), GgufError> {
    if name.chars().any(char::is_control) {
        return Err(GgufError::ControlCharacters {
            what: what(),
            escaped: name.escape_debug().to_string(),
        });
    }
    Ok(())
}

fn bool_from(b: u8, key: &str) -> Result<bool, GgufError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.into(),
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Appends a GGUF string (u64 length + bytes).
    fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s);
    }

    /// A tiny GGUF writer whose every field can be set to a wrong value.
    struct Builder {
        magic: [u8; 4],
        version: u32,
        /// Overrides the real number of key-value pairs in the header.
        n_kvs: Option<u64>,
        /// Overrides the real number of tensors in the header.
        n_tensors: Option<u64>,
        kvs: Vec<u8>,
        kv_count: u64,
        tensors: Vec<u8>,
        tensor_count: u64,
        /// Alignment used for the padding and by `tensor` (write the key separately).
        alignment: u64,
        /// Bytes of tensor data after the data section start.
        data_len: u64,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                magic: GGUF_MAGIC,
                version: 3,
                n_kvs: None,
                n_tensors: None,
                kvs: Vec::new(),
                kv_count: 0,
                tensors: Vec::new(),
                tensor_count: 0,
                alignment: DEFAULT_ALIGNMENT,
                data_len: 0,
            }
        }

        fn kv(mut self, key: &str, type_id: u32, payload: &[u8]) -> Self {
            put_str(&mut self.kvs, key.as_bytes());
            self.kvs.extend_from_slice(&type_id.to_le_bytes());
            self.kvs.extend_from_slice(payload);
            self.kv_count += 1;
            self
        }

        fn kv_str(self, key: &str, value: &str) -> Self {
            let mut p = Vec::new();
            put_str(&mut p, value.as_bytes());
            self.kv(key, 8, &p)
        }

        fn kv_u32(self, key: &str, value: u32) -> Self {
            self.kv(key, 4, &value.to_le_bytes())
        }

        fn tensor_raw(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
            put_str(&mut self.tensors, name.as_bytes());
            self.tensors
                .extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend_from_slice(&d.to_le_bytes());
            }
            self.tensors.extend_from_slice(&type_id.to_le_bytes());
            self.tensors.extend_from_slice(&offset.to_le_bytes());
            self.tensor_count += 1;
            self
        }

        /// Appends a well-formed tensor after the previous ones and grows the data section.
        fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType) -> Self {
            let n: u64 = dims.iter().product();
            let n_bytes = n / ty.block_size() * ty.type_size();
            let offset = align_up(self.data_len, self.alignment).unwrap();
            self.data_len = offset + n_bytes;
            self.tensor_raw(name, dims, ty.id(), offset)
        }

        fn build(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&self.magic);
            b.extend_from_slice(&self.version.to_le_bytes());
            b.extend_from_slice(&self.n_tensors.unwrap_or(self.tensor_count).to_le_bytes());
            b.extend_from_slice(&self.n_kvs.unwrap_or(self.kv_count).to_le_bytes());
            b.extend_from_slice(&self.kvs);
            b.extend_from_slice(&self.tensors);
            let align = if self.alignment.is_power_of_two() {
                self.alignment
            } else {
                DEFAULT_ALIGNMENT
            };
            let start = align_up(b.len() as u64, align).unwrap();
            b.resize((start + self.data_len) as usize, 0);
            b
        }
    }

    fn parse_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        parse(Cursor::new(bytes), bytes.len() as u64)
    }

    fn err(b: Builder) -> GgufError {
        match parse_bytes(&b.build()) {
            Ok(f) => panic!("expected an error, parsed {f:?}"),
            Err(e) => e,
        }
    }

    fn string_array(items: &[&str]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&8u32.to_le_bytes());
        p.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            put_str(&mut p, s.as_bytes());
        }
        p
    }

    /// A small valid file with one value of most types and three tensors.
    fn valid() -> Builder {
        let mut scores = Vec::new();
        scores.extend_from_slice(&6u32.to_le_bytes());
        scores.extend_from_slice(&3u64.to_le_bytes());
        for f in [0.5f32, -1.0, 2.0] {
            scores.extend_from_slice(&f.to_le_bytes());
        }
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("general.file_type", 3)
            .kv_u32("llama.context_length", 2048)
            .kv("general.negative", 11, &(-1i64).to_le_bytes())
            .kv("llama.block_count", 5, &2i32.to_le_bytes())
            .kv("llama.embedding_length", 10, &64u64.to_le_bytes())
            .kv("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
            .kv("general.flag", 7, &[1])
            .kv("general.small", 0, &[7])
            .kv("general.f64", 12, &1.5f64.to_le_bytes())
            .kv_str("tokenizer.chat_template", "{{ messages }}")
            .kv("tokenizer.ggml.tokens", 9, &string_array(&["a", "b", "c"]))
            .kv("tokenizer.ggml.scores", 9, &scores)
            .tensor("token_embd.weight", &[64, 3], GgmlType::Q4_1)
            .tensor("output_norm.weight", &[64], GgmlType::F32)
            .tensor("blk.0.attn_q.weight", &[256, 2], GgmlType::Q4_K)
    }

    #[test]
    fn valid_file_parses() {
        let bytes = valid().build();
        let f = parse_bytes(&bytes).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.file_type(), Some(3));
        assert_eq!(f.file_type_name(), Some("Q4_1"));
        assert_eq!(f.chat_template(), Some("{{ messages }}"));
        // A negative integer is not a u64.
        assert_eq!(f.get_u64("general.negative"), None);
        assert_eq!(f.context_length(), Some(2048));
        assert_eq!(f.get_u64("llama.block_count"), Some(2));
        assert_eq!(f.get_u64("llama.embedding_length"), Some(64));
        assert_eq!(f.get_u64("general.small"), Some(7));
        assert_eq!(f.get_u64("general.architecture"), None);
        assert_eq!(f.get_str("general.file_type"), None);
        assert_eq!(f.get("general.flag"), Some(&Value::Bool(true)));
        assert_eq!(f.get("general.f64"), Some(&Value::F64(1.5)));
        let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(tokens.elem_type(), ValueType::String);
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens.get(1), Some(Value::String("b".into())));
        assert_eq!(tokens.get(3), None);
        assert_eq!(
            f.get("tokenizer.ggml.scores"),
            Some(&Value::Array(Array::F32(vec![0.5, -1.0, 2.0])))
        );
        assert_eq!(f.kvs().len(), 13);
        assert_eq!(f.kvs()[0].0, "general.architecture");

        let t = f.tensors();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].name, "token_embd.weight");
        assert_eq!(t[0].dims, vec![64, 3]);
        assert_eq!(t[0].ggml_type, GgmlType::Q4_1);
        assert_eq!(t[0].n_bytes, 6 * 20);
        assert_eq!(t[1].offset, 128); // 120 rounded up to 32
        assert_eq!(t[1].n_bytes, 256);
        assert_eq!(t[2].offset, 384);
        assert_eq!(t[2].n_bytes, 2 * 144);
        assert_eq!(f.n_params(), 192 + 64 + 512);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset() % 32, 0);
        assert_eq!(f.file_size(), bytes.len() as u64);
        // The last tensor ends exactly at the end of the file.
        assert_eq!(f.tensor_data_range(&t[2]).1, bytes.len() as u64);
    }

    #[test]
    fn version_2_and_empty_file_parse() {
        let mut b = valid();
        b.version = 2;
        assert_eq!(parse_bytes(&b.build()).unwrap().version(), 2);
        // No keys and no tensors: just a header.
        let f = parse_bytes(&Builder::new().build()).unwrap();
        assert!(f.kvs().is_empty() && f.tensors().is_empty());
        assert_eq!(f.architecture(), None);
        assert_eq!(f.n_params(), 0);
    }

    #[test]
    fn custom_alignment_is_respected() {
        let mut b = Builder::new().kv_u32(ALIGNMENT_KEY, 64);
        b.alignment = 64;
        let b = b
            .tensor("a", &[8], GgmlType::F32)
            .tensor("b", &[8], GgmlType::F32);
        let f = parse_bytes(&b.build()).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.tensors()[1].offset, 64);

        // Offset 32 is aligned for the default but not for 64.
        let mut b = Builder::new().kv_u32(ALIGNMENT_KEY, 64);
        b.alignment = 64;
        let mut b = b.tensor_raw("a", &[8], 0, 32);
        b.data_len = 64;
        assert!(matches!(
            err(b),
            GgufError::MisalignedOffset {
                offset: 32,
                alignment: 64,
                ..
            }
        ));
    }

    #[test]
    fn bad_alignment_is_rejected() {
        for a in [0u32, 3, 48, u32::MAX] {
            let e = err(Builder::new().kv_u32(ALIGNMENT_KEY, a));
            assert!(matches!(e, GgufError::BadAlignment { .. }), "{a}: {e}");
        }
        let e = err(Builder::new().kv(ALIGNMENT_KEY, 10, &32u64.to_le_bytes()));
        assert!(
            matches!(
                e,
                GgufError::WrongKeyType {
                    expected: ValueType::U32,
                    found: ValueType::U64,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut b = valid();
        b.magic = *b"GGML";
        let e = err(b);
        assert!(matches!(e, GgufError::BadMagic { found } if &found == b"GGML"));
        assert!(e.to_string().contains("not a GGUF file"), "{e}");
    }

    #[test]
    fn other_versions_are_rejected() {
        for v in [0u32, 1, 4, 1000, u32::MAX] {
            let mut b = valid();
            b.version = v;
            let e = err(b);
            assert!(
                matches!(e, GgufError::UnsupportedVersion { version } if version == v),
                "{v}: {e}"
            );
        }
        let mut b = valid();
        b.version = 3u32.swap_bytes();
        assert!(matches!(err(b), GgufError::BigEndian { .. }));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = valid();
        let bytes = b.build();
        // The parser reads up to the end of the tensor infos and never the padding or data.
        let header_end = 24 + b.kvs.len() + b.tensors.len();
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            // The file is as long as the prefix...
            match parse_bytes(prefix) {
                Err(GgufError::Truncated { .. })
                | Err(GgufError::TensorPastEnd { .. })
                | Err(GgufError::DataPastEnd { .. })
                | Err(GgufError::TensorTooLarge { .. }) => {}
                other => panic!("prefix of {len} bytes: {other:?}"),
            }
            // ...or the length claims more than the reader holds.
            match parse(Cursor::new(prefix), bytes.len() as u64) {
                Err(GgufError::Truncated { .. }) => assert!(len < header_end),
                Ok(_) => assert!(len >= header_end, "short reader of {len} bytes parsed"),
                other => panic!("short reader of {len} bytes: {other:?}"),
            }
        }
        assert!(parse_bytes(&bytes).is_ok());
    }

    #[test]
    fn offset_past_end_is_rejected() {
        let mut b = Builder::new().tensor_raw("blk.0.attn_q.weight", &[32], 0, 1 << 20);
        b.data_len = 128;
        let e = err(b);
        assert!(matches!(e, GgufError::TensorPastEnd { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("tensor 'blk.0.attn_q.weight': data ends at byte ")
                && msg.contains("past the end of the file ("),
            "{msg}"
        );

        // Offset near u64::MAX: the end does not fit u64 and must not wrap around.
        let mut b = Builder::new().tensor_raw("t", &[32], 0, u64::MAX - 31);
        b.data_len = 128;
        assert!(matches!(err(b), GgufError::TensorPastEnd { .. }));

        // The data of the last tensor is one byte short.
        let mut b = valid();
        b.data_len -= 1;
        assert!(matches!(err(b), GgufError::TensorPastEnd { .. }));
    }

    #[test]
    fn misaligned_offset_is_rejected() {
        let mut b = Builder::new().tensor_raw("t", &[4], 0, 4);
        b.data_len = 64;
        assert!(matches!(
            err(b),
            GgufError::MisalignedOffset {
                offset: 4,
                alignment: 32,
                ..
            }
        ));
    }

    #[test]
    fn overlapping_tensors_are_rejected() {
        let mut b = Builder::new()
            .tensor_raw("a", &[8], 0, 0)
            .tensor_raw("b", &[8], 0, 32);
        b.data_len = 128;
        assert!(parse_bytes(&b.build()).is_ok());
        let mut b = Builder::new()
            .tensor_raw("a", &[8], 0, 32)
            .tensor_raw("b", &[16], 0, 0); // 64 bytes at 0 reach into a
        b.data_len = 128;
        let e = err(b);
        assert!(
            matches!(
                &e,
                GgufError::TensorsOverlap { first, second } if first == "b" && second == "a"
            ),
            "{e}"
        );
    }

    #[test]
    fn huge_string_length_is_rejected() {
        let mut p = Vec::new();
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = err(Builder::new().kv("general.name", 8, &p));
        assert!(
            matches!(e, GgufError::StringTooLong { len: u64::MAX, .. }),
            "{e}"
        );

        // Just over the cap for an ordinary key, fine for a chat template (then truncated).
        let mut p = Vec::new();
        p.extend_from_slice(&(MAX_STRING_LEN + 1).to_le_bytes());
        assert!(matches!(
            err(Builder::new().kv("general.name", 8, &p)),
            GgufError::StringTooLong { .. }
        ));
        assert!(matches!(
            err(Builder::new().kv("tokenizer.chat_template", 8, &p)),
            GgufError::Truncated { .. }
        ));
        assert!(matches!(
            err(Builder::new().kv("tokenizer.chat_template.tool_use", 8, &p)),
            GgufError::Truncated { .. }
        ));
        let mut p = Vec::new();
        p.extend_from_slice(&(MAX_LONG_STRING_LEN + 1).to_le_bytes());
        assert!(matches!(
            err(Builder::new().kv("tokenizer.chat_template", 8, &p)),
            GgufError::StringTooLong { .. }
        ));

        // A huge key length.
        let mut b = Builder::new();
        b.kvs.extend_from_slice(&(MAX_KEY_LEN + 1).to_le_bytes());
        b.kv_count = 1;
        assert!(matches!(err(b), GgufError::StringTooLong { .. }));

        // A huge tensor name length.
        let mut b = Builder::new();
        b.tensors.extend_from_slice(&u64::MAX.to_le_bytes());
        b.tensor_count = 1;
        assert!(matches!(err(b), GgufError::TensorNameTooLong { .. }));
    }

    #[test]
    fn huge_array_length_is_rejected() {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = err(Builder::new().kv("a", 9, &p));
        assert!(
            matches!(e, GgufError::ArrayTooLong { len: u64::MAX, .. }),
            "{e}"
        );

        // Within the cap but not within the file: refused before allocating.
        for elem_type in 0u32..=12 {
            let mut p = Vec::new();
            p.extend_from_slice(&elem_type.to_le_bytes());
            p.extend_from_slice(&MAX_ARRAY_LEN.to_le_bytes());
            let e = err(Builder::new().kv("a", 9, &p));
            assert!(
                matches!(e, GgufError::Truncated { .. }),
                "type {elem_type}: {e}"
            );
        }
    }

    #[test]
    fn huge_counts_are_rejected() {
        let mut b = valid();
        b.n_tensors = Some(u64::MAX);
        assert!(matches!(err(b), GgufError::TooManyTensors { .. }));
        let mut b = valid();
        b.n_kvs = Some(MAX_KVS + 1);
        assert!(matches!(err(b), GgufError::TooManyKvs { .. }));
        // Within the caps but more than the file holds (cut before the padding, which would
        // otherwise be read as an empty name).
        let mut b = Builder::new();
        b.n_tensors = Some(MAX_TENSORS);
        let e = parse_bytes(&b.build()[..24]).unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
        let mut b = Builder::new();
        b.n_kvs = Some(MAX_KVS);
        let e = parse_bytes(&b.build()[..24]).unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    }

    #[test]
    fn unknown_type_ids_are_rejected() {
        let e = err(Builder::new().kv("k", 13, &[0; 8]));
        assert!(
            matches!(e, GgufError::UnknownValueType { type_id: 13, .. }),
            "{e}"
        );
        let mut p = Vec::new();
        p.extend_from_slice(&99u32.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        let e = err(Builder::new().kv("k", 9, &p));
        assert!(
            matches!(e, GgufError::UnknownValueType { type_id: 99, .. }),
            "{e}"
        );

        for id in [4u32, 5, 31, 32, 33, 36, 37, 38, 43, 1000, u32::MAX] {
            let mut b = Builder::new().tensor_raw("t", &[256], id, 0);
            b.data_len = 2048;
            let e = err(b);
            assert!(
                matches!(e, GgufError::UnknownTensorType { type_id, .. } if type_id == id),
                "{id}: {e}"
            );
        }
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let tensor = |dims: &[u64], type_id: u32| {
            let mut b = Builder::new().tensor_raw("t", dims, type_id, 0);
            b.data_len = 4096;
            err(b)
        };
        assert!(matches!(
            tensor(&[1, 1, 1, 1, 1], 0),
            GgufError::BadDimCount { n_dims: 5, .. }
        ));
        assert!(matches!(
            tensor(&[], 0),
            GgufError::BadDimCount { n_dims: 0, .. }
        ));
        assert!(matches!(
            tensor(&[4, 0], 0),
            GgufError::ZeroDim { axis: 1, .. }
        ));
        assert!(matches!(
            tensor(&[1 << 32, 1 << 32], 0),
            GgufError::ShapeOverflow { .. }
        ));
        assert!(matches!(
            tensor(&[u64::MAX], 0),
            GgufError::ShapeOverflow { .. }
        ));
        assert!(matches!(
            tensor(&[1 << 63], 0),
            GgufError::ShapeOverflow { .. }
        ));
        assert!(matches!(
            tensor(&[1 << 31, 1 << 31, 2, 2], 0),
            GgufError::ShapeOverflow { .. }
        ));
        // Fits i64 as an element count, but not the file (nor u64 once in bytes).
        assert!(matches!(
            tensor(&[1 << 62], 28),
            GgufError::TensorTooLarge { .. }
        ));
        assert!(matches!(
            tensor(&[1 << 20], 0),
            GgufError::TensorTooLarge { .. }
        ));
        let e = tensor(&[33], GgmlType::Q4_0.id());
        assert!(
            matches!(
                e,
                GgufError::NotBlockMultiple {
                    ne0: 33,
                    block_size: 32,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_duplicates_are_rejected() {
        let e = err(valid().kv_str("general.architecture", "gemma3"));
        assert!(matches!(&e, GgufError::DuplicateKey { key } if key == "general.architecture"));
        assert!(matches!(
            err(Builder::new().kv_u32("", 1)),
            GgufError::EmptyKey { index: 0 }
        ));
        let mut b = Builder::new();
        put_str(&mut b.kvs, &[0xff, 0xfe]);
        b.kvs.extend_from_slice(&0u32.to_le_bytes());
        b.kvs.push(0);
        b.kv_count = 1;
        assert!(matches!(err(b), GgufError::InvalidUtf8 { .. }));

        let b = Builder::new()
            .tensor("t", &[8], GgmlType::F32)
            .tensor("t", &[8], GgmlType::F32);
        assert!(matches!(err(b), GgufError::DuplicateTensor { .. }));
        let mut b = Builder::new().tensor_raw("", &[8], 0, 0);
        b.data_len = 32;
        assert!(matches!(err(b), GgufError::EmptyTensorName { index: 0 }));
        let long = "x".repeat(64);
        let mut b = Builder::new().tensor_raw(&long, &[8], 0, 0);
        b.data_len = 32;
        assert!(matches!(
            err(b),
            GgufError::TensorNameTooLong { len: 64, .. }
        ));
        let e = err(Builder::new().kv_u32("general.\x1b[2Jname\n", 1));
        assert!(matches!(e, GgufError::ControlCharacters { .. }), "{e}");
        assert!(e.to_string().ends_with("general.\\u{1b}[2Jname\\n"), "{e}");
        let mut b = Builder::new().tensor_raw("a\rb", &[8], 0, 0);
        b.data_len = 32;
        assert!(matches!(err(b), GgufError::ControlCharacters { .. }));
        let ok = "x".repeat(63);
        let b = Builder::new().tensor(&ok, &[8], GgmlType::F32);
        assert!(parse_bytes(&b.build()).is_ok());
    }

    #[test]
    fn invalid_utf8_in_values_is_replaced() {
        let mut p = Vec::new();
        put_str(&mut p, b"ok\xff");
        let f = parse_bytes(&Builder::new().kv("general.name", 8, &p).build()).unwrap();
        assert_eq!(f.get_str("general.name"), Some("ok\u{fffd}"));
    }

    #[test]
    fn nested_arrays_one_level_only() {
        // An array of two arrays: [u8; 2] and [string; 1].
        let mut p = Vec::new();
        p.extend_from_slice(&9u32.to_le_bytes());
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&[1, 2]);
        p.extend_from_slice(&string_array(&["x"]));
        let f = parse_bytes(&Builder::new().kv("k", 9, &p).build()).unwrap();
        assert_eq!(
            f.get("k"),
            Some(&Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::String(vec!["x".into()])
            ])))
        );

        // An array of one array of arrays.
        let mut p = Vec::new();
        p.extend_from_slice(&9u32.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&9u32.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            err(Builder::new().kv("k", 9, &p)),
            GgufError::NestedArrayTooDeep { .. }
        ));
    }

    #[test]
    fn booleans_must_be_0_or_1() {
        assert!(matches!(
            err(Builder::new().kv("b", 7, &[2])),
            GgufError::InvalidBool { value: 2, .. }
        ));
        let mut p = Vec::new();
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&3u64.to_le_bytes());
        p.extend_from_slice(&[0, 1, 0xff]);
        assert!(matches!(
            err(Builder::new().kv("b", 9, &p)),
            GgufError::InvalidBool { value: 0xff, .. }
        ));
    }

    #[test]
    fn metadata_budget_is_enforced() {
        let bytes = valid().build();
        assert!(parse_with_budget(Cursor::new(&bytes), bytes.len() as u64, 1 << 20).is_ok());
        let e = parse_with_budget(Cursor::new(&bytes), bytes.len() as u64, 64).unwrap_err();
        assert!(matches!(e, GgufError::MetadataTooLarge { max: 64 }), "{e}");
    }

    #[test]
    fn ggml_type_table_is_consistent() {
        let mut ids = HashSet::new();
        for t in GgmlType::ALL {
            assert!(ids.insert(t.id()), "duplicate id {}", t.id());
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert!(t.block_size() > 0 && t.type_size() > 0);
            assert!(!t.name().is_empty());
        }
        // Spot checks against ggml-common.h.
        assert_eq!(
            (GgmlType::Q4_0.block_size(), GgmlType::Q4_0.type_size()),
            (32, 18)
        );
        assert_eq!(
            (GgmlType::Q4_K.block_size(), GgmlType::Q4_K.type_size()),
            (256, 144)
        );
        assert_eq!(
            (GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()),
            (256, 210)
        );
        assert_eq!(
            (GgmlType::IQ4_XS.block_size(), GgmlType::IQ4_XS.type_size()),
            (256, 136)
        );
        assert_eq!(
            (GgmlType::MXFP4.block_size(), GgmlType::MXFP4.type_size()),
            (32, 17)
        );
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(GgmlType::TQ2_0.id(), 35);
        for id in 0..=12 {
            assert_eq!(ValueType::from_id(id).map(ValueType::id), Some(id));
        }
        assert_eq!(ValueType::from_id(13), None);
    }

    #[test]
    fn file_type_names() {
        assert_eq!(file_type_name(0), Some("F32"));
        assert_eq!(file_type_name(1), Some("F16"));
        assert_eq!(file_type_name(3), Some("Q4_1"));
        assert_eq!(file_type_name(7), Some("Q8_0"));
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(32), Some("BF16"));
        assert_eq!(file_type_name(5), None);
        assert_eq!(file_type_name(9999), None);
    }

    /// A small deterministic fuzzer: random byte mutations of a valid file must never panic.
    #[test]
    fn mutations_never_panic() {
        let base = valid().build();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let interesting = [0x00u8, 0x01, 0x7f, 0x80, 0xfe, 0xff];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut bytes = base.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = if next() % 2 == 0 {
                    interesting[(next() % 6) as usize]
                } else {
                    next() as u8
                };
            }
            if next() % 8 == 0 {
                bytes.truncate((next() % bytes.len() as u64) as usize);
            }
            if parse_bytes(&bytes).is_ok() {
                accepted += 1;
            }
        }
        // Some mutations land in values or data and still parse; most do not.
        assert!(accepted > 0);
    }
}
