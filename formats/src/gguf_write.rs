//! A minimal GGUF v3 writer, and LoRA adapter files built with it.
//!
//! It writes the layout [`crate::gguf`] documents: header, key-value pairs, tensor infos, padding
//! to the alignment, then the tensor data, each tensor starting at a multiple of the alignment and
//! padded to one (ggml's own writer pads the last tensor too, and so does this one). Tensors are
//! written in the order they were added with offsets that increase accordingly: llama.cpp's
//! loader requires exactly that packing, not merely non-overlapping tensors.
//!
//! The one reader stays the judge of what is valid: [`GgufWriter::write_to`] writes to
//! `PATH.tmp`, fsyncs it, re-opens it with [`crate::gguf::open`] and only then renames it over
//! `PATH`. Cheap checks (names, shapes, data lengths) are also made when a tensor is added, so
//! that a mistake is reported where it is made.
//!
//! Tensor data is held in memory until written; that suits adapters and small models. A
//! streaming data source for multi-gigabyte outputs can be added without changing the layout code.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::gguf::{
    self, Array, GgmlType, GgufError, GgufFile, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS,
    MAX_KEY_LEN, MAX_TENSOR_NAME_LEN,
};

/// The GGUF version this writer produces.
pub const GGUF_VERSION: u32 = 3;

/// Errors while building or writing a GGUF file. Each names the key or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufWriteError {
    /// A key that the reader would refuse.
    #[error("invalid key {key:?}: {reason}")]
    BadKey {
        /// The key (control characters escaped by `{:?}`).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `general.alignment` set to something other than a nonzero power-of-two `u32`.
    #[error("{ALIGNMENT_KEY} must be a u32 holding a nonzero power of two, got {value:?}")]
    BadAlignment {
        /// The value given.
        value: Value,
    },
    /// A tensor name that the reader (and ggml) would refuse.
    #[error("invalid tensor name {name:?}: {reason}")]
    BadTensorName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors with the same name.
    #[error("tensor '{name}' was added twice; tensor names must be unique")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A shape the reader would refuse.
    #[error("tensor '{tensor}': invalid shape {dims:?}: {reason}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// The dimensions given (ggml order, `ne0` first).
        dims: Vec<u64>,
        /// What is wrong.
        reason: String,
    },
    /// Data whose length does not match the shape.
    #[error(
        "tensor '{tensor}': the shape {dims:?} of type {ggml_type} needs {expected} {unit}, \
         but {actual} were given"
    )]
    DataLength {
        /// The tensor.
        tensor: String,
        /// Its dimensions.
        dims: Vec<u64>,
        /// Its type.
        ggml_type: GgmlType,
        /// The length the shape needs.
        expected: u64,
        /// The length given.
        actual: u64,
        /// `elements` or `bytes`.
        unit: &'static str,
    },
    /// Writing, syncing or renaming failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file in question.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The written file failed the reader's validation. This is a bug in the writer (or a value
    /// beyond the reader's caps, such as an over-long string); the file was not installed.
    #[error(
        "the GGUF file written to {} does not pass validation, so it was not kept: {source}",
        path.display()
    )]
    Invalid {
        /// The temporary file that was checked (and removed).
        path: PathBuf,
        /// What the reader said.
        #[source]
        source: GgufError,
    },
    /// A LoRA pair that llama.cpp's adapter loader would refuse.
    #[error("LoRA for '{target}': {reason}")]
    BadLora {
        /// The base tensor the pair adapts.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A LoRA adapter without any tensor pair.
    #[error("a LoRA adapter needs at least one tensor pair")]
    EmptyLora,
}

/// One tensor waiting to be written.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory and writes it atomically.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    kvs: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align - 1;
    Some(x.checked_add(mask)? & !mask)
}

fn check_key(key: &str) -> Result<(), GgufWriteError> {
    let reason = if key.is_empty() {
        "keys may not be empty"
    } else if key.len() as u64 > MAX_KEY_LEN {
        "keys are at most 65535 bytes"
    } else if key.chars().any(char::is_control) {
        "keys may not contain control characters"
    } else {
        return Ok(());
    };
    Err(GgufWriteError::BadKey {
        key: key.chars().take(200).collect(),
        reason,
    })
}

impl GgufWriter {
    /// An empty file: no metadata, no tensors, the default alignment (32).
    pub fn new() -> Self {
        Self {
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// Sets `key` to `value`: replaces the value in place if the key exists (keeping the order),
    /// appends it otherwise. Setting `general.alignment` also changes the data layout.
    pub fn set(&mut self, key: &str, value: Value) -> Result<&mut Self, GgufWriteError> {
        check_key(key)?;
        if key == ALIGNMENT_KEY {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = u64::from(a),
                _ => return Err(GgufWriteError::BadAlignment { value }),
            }
        }
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.kvs.push((key.to_string(), value)),
        }
        Ok(self)
    }

    /// Removes `key`, returning its value if it was set.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.kvs.iter().position(|(k, _)| k == key)?;
        if key == ALIGNMENT_KEY {
            self.alignment = DEFAULT_ALIGNMENT;
        }
        Some(self.kvs.remove(i).1)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets every key-value pair of `src`, in its order (see [`GgufWriter::set`]). Tensors are
    /// not copied; add them with [`GgufWriter::add_tensor_raw`].
    pub fn copy_kvs_from(&mut self, src: &GgufFile) -> Result<&mut Self, GgufWriteError> {
        for (k, v) in src.kvs() {
            self.set(k, v.clone())?;
        }
        Ok(self)
    }

    /// The alignment the file will be written with.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The number of tensors added so far.
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Adds an F32 tensor. `dims` are in ggml order (`ne0`, the contiguous one, first) and their
    /// product must equal `data.len()`.
    pub fn add_tensor_f32(
        &mut self,
        name: &str,
        dims: &[u64],
        data: Vec<f32>,
    ) -> Result<&mut Self, GgufWriteError> {
        let n = self.check_tensor(name, dims, GgmlType::F32)?;
        if n != data.len() as u64 {
            return Err(GgufWriteError::DataLength {
                tensor: name.into(),
                dims: dims.to_vec(),
                ggml_type: GgmlType::F32,
                expected: n,
                actual: data.len() as u64,
                unit: "elements",
            });
        }
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.push(name, dims, GgmlType::F32, bytes);
        Ok(self)
    }

    /// Adds a tensor of any type from its encoded bytes (for instance copied from another file
    /// with [`GgufFile::tensor_data_range`]). The length must match the shape and type exactly.
    pub fn add_tensor_raw(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<&mut Self, GgufWriteError> {
        let n_elements = self.check_tensor(name, dims, ggml_type)?;
        // ne0 is a multiple of the block size (checked), so this division is exact.
        let expected =
            u128::from(n_elements / ggml_type.block_size()) * u128::from(ggml_type.type_size());
        if expected != bytes.len() as u128 {
            return Err(GgufWriteError::DataLength {
                tensor: name.into(),
                dims: dims.to_vec(),
                ggml_type,
                expected: u64::try_from(expected).unwrap_or(u64::MAX),
                actual: bytes.len() as u64,
                unit: "bytes",
            });
        }
        self.push(name, dims, ggml_type, bytes);
        Ok(self)
    }

    fn push(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
    }

    /// Checks a new tensor's name and shape against the reader's rules; returns its element
    /// count.
    fn check_tensor(
        &self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> Result<u64, GgufWriteError> {
        let bad_name = |reason: String| GgufWriteError::BadTensorName {
            name: name.chars().take(100).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(bad_name("tensor names may not be empty".into()));
        }
        if name.len() as u64 > MAX_TENSOR_NAME_LEN {
            return Err(bad_name(format!(
                "{} bytes long, ggml allows at most {MAX_TENSOR_NAME_LEN}",
                name.len()
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(bad_name(
                "tensor names may not contain control characters".into(),
            ));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufWriteError::DuplicateTensor { name: name.into() });
        }
        let bad_shape = |reason: String| GgufWriteError::BadShape {
            tensor: name.into(),
            dims: dims.to_vec(),
            reason,
        };
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(bad_shape(format!(
                "a tensor has 1 to {MAX_DIMS} dimensions"
            )));
        }
        if dims.contains(&0) {
            return Err(bad_shape("dimensions may not be zero".into()));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or_else(|| bad_shape("more elements than ggml can count (i64::MAX)".into()))?;
        if !dims[0].is_multiple_of(ggml_type.block_size()) {
            return Err(bad_shape(format!(
                "the first dimension must be a multiple of the {ggml_type} block size {}",
                ggml_type.block_size()
            )));
        }
        Ok(n)
    }

    /// Serializes the whole file into `w`.
    fn write_body(&self, w: &mut impl Write) -> io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(&gguf::GGUF_MAGIC);
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + t.data.len() as u64, self.alignment)
                .ok_or_else(|| io::Error::other("tensor data larger than u64"))?;
        }
        w.write_all(&head)?;
        let header_len = head.len() as u64;
        drop(head);
        let zeros = vec![0u8; self.alignment as usize];
        let pad = |w: &mut dyn Write, pos_now: u64| -> io::Result<u64> {
            let target = align_up(pos_now, self.alignment)
                .ok_or_else(|| io::Error::other("file larger than u64"))?;
            // target - pos_now < alignment, which fits usize (it came from a u32).
            w.write_all(&zeros[..(target - pos_now) as usize])?;
            Ok(target)
        };
        let mut at = pad(w, header_len)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            at = pad(w, at + t.data.len() as u64)?;
        }
        Ok(())
    }

    /// Writes the file atomically: to `PATH.tmp`, fsynced, checked with the reader, renamed to
    /// `PATH`, and the directory fsynced. On any failure `PATH` is left as it was and the
    /// temporary file is removed.
    pub fn write_to(&self, path: &Path) -> Result<(), GgufWriteError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let result = self.write_checked(&tmp, path);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_checked(&self, tmp: &Path, path: &Path) -> Result<(), GgufWriteError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| GgufWriteError::Io { path: p, source }
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(io_err(tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        self.write_body(&mut w).map_err(io_err(tmp))?;
        let file = w.into_inner().map_err(|e| io_err(tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(tmp))?;
        drop(file);
        gguf::open(tmp).map_err(|source| GgufWriteError::Invalid {
            path: tmp.to_path_buf(),
            source,
        })?;
        std::fs::rename(tmp, path).map_err(io_err(path))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

/// An array: element type, length, elements. Elements of an array of arrays are written the
/// same way (type, length, elements), which is how the reader and ggml read them.
fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T, const N: usize>(out: &mut Vec<u8>, v: &[T], le: fn(&T) -> [u8; N]) {
        for x in v {
            out.extend_from_slice(&le(x));
        }
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, |x| x.to_le_bytes()),
        Array::U16(v) => each(out, v, |x| x.to_le_bytes()),
        Array::I16(v) => each(out, v, |x| x.to_le_bytes()),
        Array::U32(v) => each(out, v, |x| x.to_le_bytes()),
        Array::I32(v) => each(out, v, |x| x.to_le_bytes()),
        Array::U64(v) => each(out, v, |x| x.to_le_bytes()),
        Array::I64(v) => each(out, v, |x| x.to_le_bytes()),
        Array::F32(v) => each(out, v, |x| x.to_le_bytes()),
        Array::F64(v) => each(out, v, |x| x.to_le_bytes()),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}

/// A pair of low-rank matrices adapting one base weight: `W' = W + scale · B·A`.
///
/// Shapes are in ggml order (`ne0` first). For a base weight with `ne = [n_in, n_out]`, `a` has
/// `ne = [n_in, r]` and `b` has `ne = [r, n_out]`. The token embedding (`token_embd.weight`,
/// `ne = [n_embd, n_vocab]`) is the exception llama.cpp makes: `a` is `[r, n_vocab]` (rows are
/// looked up by token) and `b` is `[r, n_embd]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// The base tensor's name, e.g. `blk.0.attn_q.weight`.
    pub target: String,
    /// `lora_a`: dimensions and F32 data.
    pub a: (Vec<u64>, Vec<f32>),
    /// `lora_b`: dimensions and F32 data.
    pub b: (Vec<u64>, Vec<f32>),
}

impl LoraPair {
    fn is_token_embd(&self) -> bool {
        self.target.ends_with("token_embd.weight")
    }

    /// The rank, if the two shapes are 2-D and agree on it the way llama.cpp expects.
    fn rank(&self) -> Result<u64, GgufWriteError> {
        let bad = |reason: String| GgufWriteError::BadLora {
            target: self.target.clone(),
            reason,
        };
        let (a, b) = (&self.a.0, &self.b.0);
        let (&[a0, a1], &[b0, _]) = (a.as_slice(), b.as_slice()) else {
            return Err(bad(format!(
                "lora_a {a:?} and lora_b {b:?} must both have 2 dimensions"
            )));
        };
        let (rank_a, rule) = if self.is_token_embd() {
            (
                a0,
                "for the token embedding, lora_a ne0 must equal lora_b ne0 (the rank)",
            )
        } else {
            (a1, "lora_a ne1 must equal lora_b ne0 (the rank)")
        };
        if rank_a != b0 {
            return Err(bad(format!("lora_a {a:?}, lora_b {b:?}: {rule}")));
        }
        Ok(b0)
    }
}

/// Suffixes llama.cpp gives the two halves of a pair.
const LORA_A_SUFFIX: &str = ".lora_a";
const LORA_B_SUFFIX: &str = ".lora_b";

/// Writes a LoRA adapter that llama.cpp's `llama_adapter_lora_init` can load.
///
/// What that loader (`src/llama-adapter.cpp` in llama-cpp-sys-2 0.1.161) checks, and how this
/// file meets it:
/// - `general.type` must be the string `adapter`, `adapter.type` the string `lora`, and
///   `general.architecture` a string naming the base model's architecture; these are read with
///   `gguf_get_val_str`, which aborts the process (not an error) on a non-string type.
/// - `adapter.lora.alpha` is optional (absent reads as 0, meaning scale = the user's scale) but,
///   if present, must be an F32: `gguf_get_val_f32` aborts on another type. It is always written
///   here; llama.cpp then scales B·A by `user_scale · alpha / rank`, rank being `lora_b` ne0.
/// - Every tensor name must end in `.lora_a` or `.lora_b` (or `_norm.weight`, which it skips);
///   anything else fails the load. Both halves of each pair must be present.
/// - The base name (suffix removed) must be a tensor of the base model.
/// - Shapes: base ne0 = `lora_a` ne0, base ne1 = `lora_b` ne1, and `lora_a` ne1 = `lora_b` ne0
///   (otherwise "lora_a tensor is not transposed"); for `token_embd.weight`, base ne0 = `lora_b`
///   ne1 and base ne1 = `lora_a` ne1. The last two need the base model: see
///   [`check_lora_against`].
/// - Tensor data must lie within the file, and ggml's GGUF loader wants offsets packed in order
///   with each tensor padded to the alignment, which [`GgufWriter`] does.
///
/// Any tensor type is accepted by the loader; F32 is written here.
pub fn write_lora_adapter(
    path: &Path,
    architecture: &str,
    alpha: f32,
    pairs: &[LoraPair],
) -> Result<(), GgufWriteError> {
    if pairs.is_empty() {
        return Err(GgufWriteError::EmptyLora);
    }
    if !alpha.is_finite() {
        return Err(GgufWriteError::BadLora {
            target: "adapter.lora.alpha".into(),
            reason: format!("alpha must be a finite number, got {alpha}"),
        });
    }
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(architecture.into()))?
        .set("general.type", Value::String("adapter".into()))?
        .set("adapter.type", Value::String("lora".into()))?
        .set("adapter.lora.alpha", Value::F32(alpha))?;
    for pair in pairs {
        for suffix in [LORA_A_SUFFIX, LORA_B_SUFFIX] {
            // llama.cpp strips the suffix with replace_all, so it must not appear in the target.
            if pair.target.contains(suffix) {
                return Err(GgufWriteError::BadLora {
                    target: pair.target.clone(),
                    reason: format!("the target name may not contain {suffix:?}"),
                });
            }
        }
        pair.rank()?;
        let (a_dims, a_data) = &pair.a;
        let (b_dims, b_data) = &pair.b;
        w.add_tensor_f32(
            &format!("{}{LORA_A_SUFFIX}", pair.target),
            a_dims,
            a_data.clone(),
        )?;
        w.add_tensor_f32(
            &format!("{}{LORA_B_SUFFIX}", pair.target),
            b_dims,
            b_data.clone(),
        )?;
    }
    w.write_to(path)
}

/// Checks pairs against the base model the way llama.cpp's loader will: each target exists in
/// `base` and the shapes fit it (see [`write_lora_adapter`]). Catches a wrong base model before
/// llama.cpp refuses the adapter.
pub fn check_lora_against(base: &GgufFile, pairs: &[LoraPair]) -> Result<(), GgufWriteError> {
    for pair in pairs {
        let bad = |reason: String| GgufWriteError::BadLora {
            target: pair.target.clone(),
            reason,
        };
        pair.rank()?;
        let t = base
            .tensors()
            .iter()
            .find(|t| t.name == pair.target)
            .ok_or_else(|| bad("no tensor of that name in the base model".into()))?;
        let (&[n0, n1], a, b) = (t.dims.as_slice(), &pair.a.0, &pair.b.0) else {
            return Err(bad(format!(
                "the base tensor has shape {:?}; only 2-D weights can be adapted",
                t.dims
            )));
        };
        let fits = if pair.is_token_embd() {
            n0 == b[1] && n1 == a[1]
        } else {
            n0 == a[0] && n1 == b[1]
        };
        if !fits {
            return Err(bad(format!(
                "lora_a {a:?} and lora_b {b:?} do not fit the base shape {:?}",
                t.dims
            )));
        }
    }
    Ok(())
}

/// splitmix64 (Vigna): a tiny, well-mixed deterministic generator, the one seeded stream of
/// the workspace (test weights here; the toolchain's LoRA initialization, data order and
/// multiple-choice distractors).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for the sizes it draws from).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [-scale, scale], from the top 24 bits (exact in f32).
    pub fn uniform(&mut self, scale: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u32 << 24) as f32; // [0, 1)
        (unit * 2.0 - 1.0) * scale
    }

    fn fill(&mut self, n: u64, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }
}

/// Random LoRA pairs of rank `rank` for every 2-D tensor of `base` whose name ends with one of
/// `targets_suffix` (e.g. `["attn_q.weight", "attn_v.weight"]`), in the base file's order, with
/// values uniform in `[-scale, scale]` from a splitmix64 stream seeded with `seed`.
///
/// For tests: an adapter that visibly changes a model's output without any training. Tensors
/// that are not 2-D are skipped.
pub fn random_lora_for(
    base: &GgufFile,
    targets_suffix: &[&str],
    rank: u64,
    scale: f32,
    seed: u64,
) -> Vec<LoraPair> {
    let mut rng = SplitMix64(seed);
    let mut pairs = Vec::new();
    for t in base.tensors() {
        if !targets_suffix.iter().any(|s| t.name.ends_with(s)) {
            continue;
        }
        let &[n0, n1] = t.dims.as_slice() else {
            continue;
        };
        let mut pair = LoraPair {
            target: t.name.clone(),
            a: (vec![n0, rank], Vec::new()),
            b: (vec![rank, n1], Vec::new()),
        };
        if pair.is_token_embd() {
            pair.a.0 = vec![rank, n1];
            pair.b.0 = vec![rank, n0];
        }
        pair.a.1 = rng.fill(n0 * rank, scale);
        pair.b.1 = rng.fill(n1 * rank, scale);
        pairs.push(pair);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_is_stable_and_in_range() {
        // First outputs for seed 0, from the reference implementation's published sequence.
        let mut r = SplitMix64(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
        let mut r = SplitMix64(42);
        for _ in 0..10_000 {
            let x = r.uniform(0.5);
            assert!((-0.5..0.5).contains(&x), "{x}");
        }
    }

    #[test]
    fn layout_is_packed_and_aligned() {
        let mut w = GgufWriter::new();
        w.add_tensor_f32("a", &[3], vec![1.0, 2.0, 3.0]).unwrap();
        w.add_tensor_f32("b", &[1], vec![4.0]).unwrap();
        let mut bytes = Vec::new();
        w.write_body(&mut bytes).unwrap();
        // Header: 4 + 4 + 8 + 8 = 24; each tensor info: 8 + 1 + 4 + 8 + 4 + 8 = 33.
        let infos_end = 24 + 33 * 2;
        let data = align_up(infos_end, 32).unwrap() as usize;
        assert_eq!(bytes.len(), data + 32 + 32, "each tensor padded to 32");
        assert_eq!(&bytes[data..data + 4], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[data + 32..data + 36], &4.0f32.to_le_bytes());
        // The second tensor's offset field (last 8 bytes of the infos) is 32.
        let off = &bytes[infos_end as usize - 8..infos_end as usize];
        assert_eq!(off, &32u64.to_le_bytes());
    }
}
