//! A Hugging Face checkpoint directory on disk: `config.json` and the safetensors weights (one
//! `model.safetensors`, or the shards that `model.safetensors.index.json` names).
//!
//! Every weight file is read into memory once and its header validated by the `safetensors`
//! crate (offsets inside the file, no overlaps, lengths matching shapes) before any tensor is
//! used; a tensor's data is then decoded to `f32` on request. Holding the files in memory suits
//! the encoder models this serves first (tens of megabytes); a memory-mapped reader for
//! multi-gigabyte decoders can replace [`Checkpoint::open`] without changing its callers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::ImportError;

/// One weight file: its path and bytes.
struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// Where a tensor lives and what it looks like.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The shape, outermost dimension first (PyTorch order).
    pub shape: Vec<usize>,
    /// The element type on disk.
    pub dtype: Dtype,
    /// The index of its file in [`Checkpoint::files`].
    file: usize,
}

/// A checkpoint directory, validated and read.
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: serde_json::Value,
    files: Vec<WeightFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// An optional unsigned integer of `config.json` (absent or null: `None`); anything else
    /// than a positive integer is refused, naming the key.
    pub fn config_u32(&self, key: &str) -> Result<Option<u32>, ImportError> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v > 0)
                .map(Some)
                .ok_or_else(|| ImportError::Invalid {
                    path: self.dir.join("config.json"),
                    reason: format!("{key:?} is not a positive integer"),
                }),
        }
    }

    /// A required unsigned integer of `config.json`.
    pub fn need_config_u32(&self, key: &str) -> Result<u32, ImportError> {
        self.config_u32(key)?.ok_or_else(|| ImportError::Invalid {
            path: self.dir.join("config.json"),
            reason: format!("{key:?} is missing"),
        })
    }
}

/// Reads and parses a JSON file of the checkpoint.
pub fn read_json(path: &Path) -> Result<serde_json::Value, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ImportError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// The weight files of `dir`: the shards of the index when there is one, else
/// `model.safetensors`, else every `*.safetensors` file (sorted, so the order is stable).
fn weight_paths(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ImportError::Invalid {
                path: index.clone(),
                reason: "no \"weight_map\" object".into(),
            })?;
        let mut names: Vec<&str> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| ImportError::Invalid {
                path: index.clone(),
                reason: format!("the file of tensor {tensor:?} is not a string"),
            })?;
            // A shard name is a plain file name inside the directory, never a path.
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(ImportError::Invalid {
                    path: index.clone(),
                    reason: format!("shard name {file:?} is not a plain file name"),
                });
            }
            if !names.contains(&file) {
                names.push(file);
            }
        }
        names.sort_unstable();
        return Ok(names.into_iter().map(|n| dir.join(n)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ImportError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(ImportError::Invalid {
            path: dir.to_path_buf(),
            reason: "no .safetensors weights in the directory (PyTorch .bin checkpoints are not \
                     read: they are pickles, which can run code)"
                .into(),
        });
    }
    Ok(paths)
}

impl Checkpoint {
    /// Reads `dir/config.json` and every weight file, validating the safetensors headers.
    pub fn open(dir: &Path) -> Result<Self, ImportError> {
        if !dir.is_dir() {
            return Err(ImportError::Invalid {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        let config = read_json(&dir.join("config.json"))?;
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in weight_paths(dir)? {
            let bytes = std::fs::read(&path).map_err(|source| ImportError::Read {
                path: path.clone(),
                source,
            })?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| ImportError::Invalid {
                path: path.clone(),
                reason: format!("not a valid safetensors file: {e}"),
            })?;
            for (name, view) in st.iter() {
                let info = TensorInfo {
                    shape: view.shape().to_vec(),
                    dtype: view.dtype(),
                    file: files.len(),
                };
                if tensors.insert(name.to_string(), info).is_some() {
                    return Err(ImportError::Invalid {
                        path: path.clone(),
                        reason: format!("tensor {name:?} is stored in two weight files"),
                    });
                }
            }
            files.push(WeightFile { path, bytes });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            files,
            tensors,
        })
    }

    /// Every tensor, by name (sorted).
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The weight files read.
    pub fn file_paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// The total size of the weight files, bytes.
    pub fn weight_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }

    /// A tensor's elements as `f32`, row-major (the last dimension contiguous), from F32, F16 or
    /// BF16 storage.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ImportError> {
        let info = self.tensors.get(name).ok_or_else(|| ImportError::Tensor {
            name: name.into(),
            reason: "missing from the checkpoint".into(),
        })?;
        let file = &self.files[info.file];
        // The header was validated in `open`; parsing it again is cheap next to the decoding.
        let st = SafeTensors::deserialize(&file.bytes).map_err(|e| ImportError::Invalid {
            path: file.path.clone(),
            reason: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|e| ImportError::Tensor {
            name: name.into(),
            reason: e.to_string(),
        })?;
        let data = view.data();
        let out: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ImportError::Tensor {
                    name: name.into(),
                    reason: format!("element type {other:?} is not a float type (F32, F16, BF16)"),
                })
            }
        };
        if let Some(bad) = out.iter().position(|x| !x.is_finite()) {
            return Err(ImportError::Tensor {
                name: name.into(),
                reason: format!("element {bad} is not finite ({})", out[bad]),
            });
        }
        Ok(out)
    }
}
