//! The crate's only `unsafe`: the llama.cpp calls behind `quantize`, `eval`, the gate and
//! `finetune`'s tokenizer (training itself runs on candle, in safe Rust: see [`crate::train`]).
//!
//! The safe `llama-cpp-2` API exposes no saving or quantizing, and keeps its raw pointers
//! private, so this module wraps the few C functions the toolchain needs (from
//! `llama-cpp-sys-2`, the same build the daemon links) in small owning types: [`Model`],
//! [`Adapter`], [`Context`]. Everything else in the crate stays safe.
//!
//! ggml reports many programming errors with `GGML_ASSERT`, which calls `abort()`: nothing can
//! catch it. The wrappers therefore check every precondition they know of before the call (context
//! sizes a multiple of 256, token ids below the vocabulary size, adapter files that are LoRA
//! adapters of the model's architecture), and the daemon runs this binary as a child process anyway.
//!
//! llama.cpp's and ggml's log lines go to stderr, filtered by `INHOUSE_LLAMA_LOG`
//! (`none`, `error`, `warn` — the default —, `info` or `debug`): stdout belongs to the progress
//! protocol (see [`inhouse_formats::progress`]).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use inhouse_formats::{backends, gguf};
use llama_cpp_sys_2 as sys;

/// Context sizes are padded by llama.cpp to a multiple of this; the toolchain insists on it.
pub const CTX_ALIGN: u32 = 256;

/// Errors from llama.cpp calls. llama.cpp says little about why; where it logs a reason, that
/// line went to stderr just before.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// No ggml CPU backend could be loaded.
    #[error("{0}")]
    Backend(String),
    /// A path that cannot be passed to C (not UTF-8 or containing NUL).
    #[error("{}: the path must be UTF-8 without NUL bytes", .0.display())]
    Path(PathBuf),
    /// `llama_model_load_from_file` returned NULL.
    #[error("llama.cpp could not load the model {} (its reason is on stderr)", .0.display())]
    Load(PathBuf),
    /// Invalid parameters, refused before calling llama.cpp.
    #[error("{0}")]
    Invalid(String),
    /// `llama_init_from_model` returned NULL or a different context size.
    #[error("llama.cpp could not create a context: {0}")]
    Context(String),
    /// Tokenization or the chat template failed.
    #[error("{0}")]
    Text(String),
    /// `llama_decode` failed.
    #[error("llama_decode failed with code {0}")]
    Decode(i32),
    /// `llama_model_quantize` failed.
    #[error("llama_model_quantize failed (code {0}; its reason is on stderr)")]
    Quantize(u32),
    /// The LoRA adapter is not one llama.cpp can load safely, or llama.cpp refused it.
    #[error("{}: {reason}", .path.display())]
    Adapter {
        /// The adapter file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `llama_model_save_to_file` did not produce the file.
    #[error("llama.cpp did not write {}", .0.display())]
    Save(PathBuf),
}

fn c_path(path: &Path) -> Result<CString, LlamaError> {
    path.to_str()
        .and_then(|s| CString::new(s).ok())
        .ok_or_else(|| LlamaError::Path(path.to_path_buf()))
}

// ---------------------------------------------------------------------------------------------
// Start-up: logging and backends

/// The least severe ggml log level that reaches stderr.
static LOG_THRESHOLD: AtomicU32 = AtomicU32::new(sys::GGML_LOG_LEVEL_WARN);
/// The level of the last line, for continuation lines (`GGML_LOG_LEVEL_CONT`).
static LOG_LAST: AtomicU32 = AtomicU32::new(sys::GGML_LOG_LEVEL_INFO);

/// ggml/llama.cpp log callback: filtered lines to stderr, never stdout.
unsafe extern "C" fn log_to_stderr(
    level: sys::ggml_log_level,
    text: *const c_char,
    _: *mut c_void,
) {
    let level = if level == sys::GGML_LOG_LEVEL_CONT {
        LOG_LAST.load(Ordering::Relaxed)
    } else {
        LOG_LAST.store(level, Ordering::Relaxed);
        level
    };
    if text.is_null() || level < LOG_THRESHOLD.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated string that lives for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) };
    let _ = std::io::stderr().lock().write_all(text.to_bytes());
}

/// Sets up logging, loads the best ggml CPU variant and initializes llama.cpp, once per process.
/// Must run before any model is loaded or quantized. Returns the backend directory used.
pub fn init() -> Result<&'static Path, LlamaError> {
    static INIT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let threshold = match std::env::var("INHOUSE_LLAMA_LOG").as_deref() {
            Ok("none") => u32::MAX,
            Ok("error") => sys::GGML_LOG_LEVEL_ERROR,
            Ok("info") => sys::GGML_LOG_LEVEL_INFO,
            Ok("debug") => sys::GGML_LOG_LEVEL_DEBUG,
            _ => sys::GGML_LOG_LEVEL_WARN,
        };
        LOG_THRESHOLD.store(threshold, Ordering::Relaxed);
        // SAFETY: the callback is a plain function valid for the whole process and ignores its
        // user data; llama_log_set also installs it for ggml.
        unsafe { sys::llama_log_set(Some(log_to_stderr), ptr::null_mut()) };
        let dir = &backends::find_backend_dir(sys::BACKENDS_DIR)?;
        llama_cpp_2::llama_backend::load_backends_from_path(dir);
        // SAFETY: no arguments; called once (guarded by the OnceLock) before any other use.
        unsafe { sys::llama_backend_init() };
        // SAFETY: a read-only query of ggml's device registry.
        if unsafe { sys::ggml_backend_dev_count() } == 0 {
            return Err(format!(
                "{}: no CPU variant loads on this processor (x86-64 required)",
                dir.display()
            ));
        }
        Ok(dir.clone())
    })
    .as_deref()
    .map_err(|e| LlamaError::Backend(e.clone()))
}

// ---------------------------------------------------------------------------------------------
// Quantization

/// Quantizes (or converts) `input` into `output` with llama.cpp's `ftype` id
/// (`LLAMA_FTYPE_*`), requantizing already-quantized tensors if needed. llama.cpp reads the
/// input itself: validate it with [`inhouse_formats::gguf::open`] first.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    ftype: u32,
    threads: u32,
) -> Result<(), LlamaError> {
    init()?;
    let (inp, out) = (c_path(input)?, c_path(output)?);
    // SAFETY: returns a plain struct by value.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.ftype = ftype;
    params.nthread = i32::try_from(threads).unwrap_or(i32::MAX);
    params.allow_requantize = true;
    // SAFETY: both paths are valid NUL-terminated strings and `params` outlives the call;
    // llama.cpp catches its own exceptions and returns nonzero on failure.
    let rc = unsafe { sys::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LlamaError::Quantize(rc))
    }
}

// ---------------------------------------------------------------------------------------------
// Models

/// A loaded model (owned; freed on drop).
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

/// How to load a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Memory-mapped, read-only weights: evaluation.
    Mapped,
    /// Weights read into memory and writable, on the CPU: training (mapped weights cannot be
    /// updated).
    Training,
}

impl Model {
    /// Loads a GGUF model. Validate the file with [`inhouse_formats::gguf::open`] first.
    pub fn load(path: &Path, mode: LoadMode) -> Result<Self, LlamaError> {
        init()?;
        let cpath = c_path(path)?;
        // SAFETY: returns a plain struct by value.
        let mut params = unsafe { sys::llama_model_default_params() };
        match mode {
            LoadMode::Mapped => params.load_mode = sys::LLAMA_LOAD_MODE_MMAP,
            LoadMode::Training => {
                params.load_mode = sys::LLAMA_LOAD_MODE_NONE;
                params.n_gpu_layers = 0;
            }
        }
        // SAFETY: the path is a valid C string; the params hold no pointers we set.
        let ptr = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), params) };
        NonNull::new(ptr)
            .map(|ptr| Self { ptr })
            .ok_or_else(|| LlamaError::Load(path.to_path_buf()))
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model pointer is valid while `self` lives; the vocab belongs to the model.
        unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    /// The vocabulary size.
    pub fn n_vocab(&self) -> usize {
        // SAFETY: a valid vocab pointer (see `vocab`).
        let n = unsafe { sys::llama_vocab_n_tokens(self.vocab()) };
        usize::try_from(n).unwrap_or(0)
    }

    /// The context length the model was trained with (as its metadata says).
    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: a valid model pointer.
        let n = unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) };
        u32::try_from(n).unwrap_or(0)
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<i32> {
        // SAFETY: a valid vocab pointer.
        let t = unsafe { sys::llama_vocab_eos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    /// The model's default chat template (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: a valid model pointer; NULL name asks for the default template. The returned
        // string is owned by the model and copied before `self` can go away.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), ptr::null()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-NULL, NUL-terminated, owned by the model.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the model's metadata asks;
    /// `parse_special` turns special-token text (`<|im_start|>`) into those tokens.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, LlamaError> {
        let len = i32::try_from(text.len())
            .map_err(|_| LlamaError::Text("a record longer than 2 GiB".into()))?;
        let mut tokens: Vec<i32> = vec![0; text.len() / 2 + 8];
        for _ in 0..2 {
            let cap = i32::try_from(tokens.len()).unwrap_or(i32::MAX);
            // SAFETY: `text` is valid for `len` bytes (no NUL needed, the length is passed) and
            // `tokens` has room for `cap` tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast::<c_char>(),
                    len,
                    tokens.as_mut_ptr(),
                    cap,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                tokens.truncate(n as usize);
                return Ok(tokens);
            }
            if n == i32::MIN {
                break;
            }
            tokens.resize(n.unsigned_abs() as usize, 0);
        }
        Err(LlamaError::Text("tokenization failed".into()))
    }

    /// Saves the model's tensors with `llama_model_save_to_file` (which drops much of the
    /// metadata: see `finetune`).
    pub fn save(&self, path: &Path) -> Result<(), LlamaError> {
        let cpath = c_path(path)?;
        let _ = std::fs::remove_file(path);
        // SAFETY: a valid model and a valid C string.
        unsafe { sys::llama_model_save_to_file(self.ptr.as_ptr(), cpath.as_ptr()) };
        if path.is_file() {
            Ok(())
        } else {
            Err(LlamaError::Save(path.to_path_buf()))
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and every Context borrowing
        // the model has been dropped (the borrow checker sees to that).
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// Renders `messages` (role, content) with a chat template through llama.cpp's built-in
/// template engine (`llama_chat_apply_template`, which recognises the common templates, ChatML
/// and Gemma among them, from the Jinja text).
pub fn apply_chat_template(
    template: &str,
    messages: &[(String, String)],
    add_assistant: bool,
) -> Result<String, LlamaError> {
    let nul = |_| LlamaError::Text("a message contains a NUL byte".into());
    let tmpl = CString::new(template).map_err(nul)?;
    let owned: Vec<(CString, CString)> = messages
        .iter()
        .map(|(r, c)| Ok((CString::new(r.as_str())?, CString::new(c.as_str())?)))
        .collect::<Result<_, std::ffi::NulError>>()
        .map_err(nul)?;
    let chat: Vec<sys::llama_chat_message> = owned
        .iter()
        .map(|(r, c)| sys::llama_chat_message {
            role: r.as_ptr(),
            content: c.as_ptr(),
        })
        .collect();
    let total: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
    let mut buf = vec![0u8; total * 2 + 256];
    for _ in 0..2 {
        let cap = i32::try_from(buf.len())
            .map_err(|_| LlamaError::Text("a conversation longer than 1 GiB".into()))?;
        // SAFETY: every pointer in `chat` points into `owned`, alive for the call; `buf` has
        // `cap` writable bytes.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                chat.as_ptr(),
                chat.len(),
                add_assistant,
                buf.as_mut_ptr().cast::<c_char>(),
                cap,
            )
        };
        if n < 0 {
            return Err(LlamaError::Text(
                "llama.cpp does not support this model's chat template".into(),
            ));
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return String::from_utf8(buf)
                .map_err(|_| LlamaError::Text("the chat template produced invalid UTF-8".into()));
        }
        buf.resize(n, 0);
    }
    Err(LlamaError::Text(
        "the chat template output kept growing".into(),
    ))
}

// ---------------------------------------------------------------------------------------------
// LoRA adapters

/// A LoRA adapter loaded for a [`Model`] (`llama_adapter_lora_init`; freed on drop). Applied to a
/// context with [`Context::set_adapter`], as the daemon serves `base+adapter`.
pub struct Adapter<'m> {
    ptr: NonNull<sys::llama_adapter_lora>,
    model: &'m Model,
}

/// Checks what llama.cpp's adapter loader reads with calls that abort on a wrong type
/// (`gguf_get_val_str`, `gguf_get_val_f32`): `general.type = "adapter"`, `adapter.type = "lora"`,
/// `general.architecture` a string equal to the base's, `adapter.lora.alpha` absent or an F32.
pub fn check_adapter_file(path: &Path, base_arch: Option<&str>) -> Result<(), String> {
    let f = gguf::open(path).map_err(|e| format!("not a valid GGUF file: {e}"))?;
    let string = |key: &str| match f.get(key) {
        None => Err(format!("{key} is missing")),
        Some(v) => v
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{key} is not a string")),
    };
    let general_type = string("general.type")?;
    if general_type != "adapter" {
        return Err(format!(
            "general.type is {general_type:?}, not \"adapter\" (is this a whole model?)"
        ));
    }
    let adapter_type = string("adapter.type")?;
    if adapter_type != "lora" {
        return Err(format!("adapter.type is {adapter_type:?}, not \"lora\""));
    }
    let arch = string("general.architecture")?;
    if let Some(base) = base_arch {
        if base != arch {
            return Err(format!(
                "an adapter for the {arch} architecture, the base model is {base}"
            ));
        }
    }
    match f.get("adapter.lora.alpha") {
        None | Some(gguf::Value::F32(_)) => {}
        Some(_) => return Err("adapter.lora.alpha is not an F32".into()),
    }
    Ok(())
}

impl Model {
    /// The model's `general.architecture`, if its metadata has one.
    pub fn architecture(&self) -> Option<String> {
        let key = c"general.architecture";
        let mut buf = vec![0u8; 128];
        // SAFETY: a valid model pointer, a NUL-terminated key and a buffer of `buf.len()` bytes
        // that llama.cpp NUL-terminates (snprintf).
        let n = unsafe {
            sys::llama_model_meta_val_str(
                self.ptr.as_ptr(),
                key.as_ptr(),
                buf.as_mut_ptr().cast::<c_char>(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n.min(buf.len() - 1));
        String::from_utf8(buf).ok()
    }

    /// Loads the LoRA adapter at `path` for this model. The file is checked first (see
    /// [`check_adapter_file`]): llama.cpp aborts on some malformed adapters instead of failing.
    pub fn load_adapter(&self, path: &Path) -> Result<Adapter<'_>, LlamaError> {
        let err = |reason: String| LlamaError::Adapter {
            path: path.to_path_buf(),
            reason,
        };
        check_adapter_file(path, self.architecture().as_deref()).map_err(err)?;
        let cpath = c_path(path)?;
        // SAFETY: a valid model and a valid C string; llama.cpp catches its own exceptions and
        // returns NULL on failure. The adapter registers itself with the model, which frees it
        // if we do not (we do, in Drop, which also unregisters it).
        let ptr = unsafe { sys::llama_adapter_lora_init(self.ptr.as_ptr(), cpath.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Adapter { ptr, model: self })
            .ok_or_else(|| {
                err("llama.cpp could not load the adapter (its reason is on stderr)".into())
            })
    }
}

impl Drop for Adapter<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_adapter_lora_init on a model that is still alive
        // (borrowed for 'm) and is freed once; no context uses it any more, since a context
        // that was given it borrows it for as long as the context lives (`set_adapter`).
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------------------------
// Contexts

/// A llama.cpp context on a [`Model`] (freed on drop).
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    n_ctx: u32,
}

/// Options of a context.
#[derive(Debug, Clone, Copy)]
pub struct ContextOptions {
    /// Context size; a positive multiple of [`CTX_ALIGN`]. Batch and micro-batch are the same
    /// size, so one window is one decode and, for training, one optimizer step.
    pub n_ctx: u32,
    /// Threads for computation.
    pub threads: u32,
    /// F32 K/V, flash attention off: what llama.cpp's backward pass needs.
    pub training: bool,
}

impl<'m> Context<'m> {
    /// Creates a context; refuses sizes that would make ggml abort later.
    pub fn new(model: &'m Model, opts: ContextOptions) -> Result<Self, LlamaError> {
        if opts.n_ctx < CTX_ALIGN || !opts.n_ctx.is_multiple_of(CTX_ALIGN) || opts.n_ctx > 1 << 20 {
            return Err(LlamaError::Invalid(format!(
                "the context size must be a multiple of {CTX_ALIGN} from {CTX_ALIGN} on, got {}",
                opts.n_ctx
            )));
        }
        let threads = i32::try_from(opts.threads.max(1)).unwrap_or(i32::MAX);
        // SAFETY: returns a plain struct by value.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = opts.n_ctx;
        // n_ubatch == n_ctx: otherwise llama.cpp's training graph overflows and ggml aborts.
        p.n_batch = opts.n_ctx;
        p.n_ubatch = opts.n_ctx;
        p.n_seq_max = 1;
        p.n_threads = threads;
        p.n_threads_batch = threads;
        if opts.training {
            p.type_k = sys::GGML_TYPE_F32;
            p.type_v = sys::GGML_TYPE_F32;
            p.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        }
        // SAFETY: a valid model (borrowed for 'm, so it outlives the context) and plain params.
        let ptr = unsafe { sys::llama_init_from_model(model.ptr.as_ptr(), p) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| LlamaError::Context("llama_init_from_model failed".into()))?;
        let ctx = Self {
            ptr,
            model,
            n_ctx: opts.n_ctx,
        };
        // SAFETY: a valid context.
        let got = unsafe { sys::llama_n_ctx(ctx.ptr.as_ptr()) };
        if got != opts.n_ctx {
            return Err(LlamaError::Context(format!(
                "asked for a context of {} tokens, llama.cpp made {got}",
                opts.n_ctx
            )));
        }
        Ok(ctx)
    }

    /// The context size.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Applies `adapter` (of this context's model) at `scale` to every decode from now on,
    /// replacing any adapter set before. The adapter is borrowed for the context's whole life:
    /// llama.cpp keeps its pointer.
    pub fn set_adapter(&mut self, adapter: &'m Adapter<'m>, scale: f32) -> Result<(), LlamaError> {
        if !ptr::eq(adapter.model, self.model) {
            return Err(LlamaError::Invalid(
                "the adapter was loaded for another model".into(),
            ));
        }
        if !scale.is_finite() {
            return Err(LlamaError::Invalid(format!(
                "the adapter scale must be finite, got {scale}"
            )));
        }
        let mut adapters = [adapter.ptr.as_ptr()];
        let mut scales = [scale];
        // SAFETY: a valid context; one adapter of its own model (checked above) and one scale,
        // both arrays valid for the call (llama.cpp copies the pointer and scale into its own
        // set). The adapter outlives the context: it is borrowed for 'm.
        let rc = unsafe {
            sys::llama_set_adapters_lora(
                self.ptr.as_ptr(),
                adapters.as_mut_ptr(),
                1,
                scales.as_mut_ptr(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(LlamaError::Invalid(format!(
                "llama_set_adapters_lora failed with code {rc}"
            )))
        }
    }

    /// Negative log-likelihood (nats) of each token after the first given those before it, in
    /// one decode from an empty cache: `out[i] = -ln p(tokens[i+1] | tokens[..=i])`.
    pub fn token_nlls(&mut self, tokens: &[i32]) -> Result<Vec<f64>, LlamaError> {
        let n_vocab = self.model.n_vocab();
        if tokens.len() < 2 || tokens.len() > self.n_ctx as usize {
            return Err(LlamaError::Invalid(format!(
                "scoring needs 2 to {} tokens, got {}",
                self.n_ctx,
                tokens.len()
            )));
        }
        if tokens.iter().any(|&t| t < 0 || t as usize >= n_vocab) {
            return Err(LlamaError::Invalid(
                "a token id outside the vocabulary".into(),
            ));
        }
        let n = tokens.len() as i32;
        // SAFETY: a valid context; clearing its memory (data too) before a fresh sequence.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) };
        // SAFETY: allocates a batch for `n` tokens with one sequence id each; freed by the guard.
        let batch = Batch(unsafe { sys::llama_batch_init(n, 0, 1) });
        for (i, &t) in tokens.iter().enumerate() {
            // SAFETY: `i < n`, the capacity of every array in the batch; `seq_id[i]` points to
            // room for one id (n_seq_max 1).
            unsafe {
                *batch.0.token.add(i) = t;
                *batch.0.pos.add(i) = i as i32;
                *batch.0.n_seq_id.add(i) = 1;
                *(*batch.0.seq_id.add(i)) = 0;
                *batch.0.logits.add(i) = 1;
            }
        }
        let mut b = batch.0;
        b.n_tokens = n;
        // SAFETY: a valid context and a fully initialized batch of `n <= n_batch` tokens.
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), b) };
        if rc != 0 {
            return Err(LlamaError::Decode(rc));
        }
        let mut out = Vec::with_capacity(tokens.len() - 1);
        for i in 0..tokens.len() - 1 {
            // SAFETY: every position requested logits, so row `i` exists and holds n_vocab
            // floats until the next decode on this context (we copy out before that).
            let row = unsafe {
                let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32);
                if p.is_null() {
                    return Err(LlamaError::Decode(-1));
                }
                std::slice::from_raw_parts(p, n_vocab)
            };
            out.push(nll(row, tokens[i + 1] as usize));
        }
        Ok(out)
    }

    /// Checks token ids against the vocabulary (ggml aborts on an id out of range).
    fn check_tokens(&self, tokens: &[i32]) -> Result<(), LlamaError> {
        let n_vocab = self.model.n_vocab();
        if tokens.iter().any(|&t| t < 0 || t as usize >= n_vocab) {
            return Err(LlamaError::Invalid(
                "a token id outside the vocabulary".into(),
            ));
        }
        Ok(())
    }

    /// Decodes `tokens` at positions `pos0..` of sequence 0, on top of what the cache holds;
    /// logits for every token when `all_logits`, else for the last only. Sizes and ids must
    /// have been checked (`pos0 + tokens.len() <= n_ctx`, ids in the vocabulary).
    fn decode_at(
        &mut self,
        tokens: &[i32],
        pos0: usize,
        all_logits: bool,
    ) -> Result<(), LlamaError> {
        let n = tokens.len();
        debug_assert!(n > 0 && pos0 + n <= self.n_ctx as usize);
        // SAFETY: allocates a batch for `n` tokens with one sequence id each; freed by the guard.
        let batch = Batch(unsafe { sys::llama_batch_init(n as i32, 0, 1) });
        for (i, &t) in tokens.iter().enumerate() {
            // SAFETY: `i < n`, the capacity of every array in the batch; `seq_id[i]` points to
            // room for one id (n_seq_max 1).
            unsafe {
                *batch.0.token.add(i) = t;
                *batch.0.pos.add(i) = (pos0 + i) as i32;
                *batch.0.n_seq_id.add(i) = 1;
                *(*batch.0.seq_id.add(i)) = 0;
                *batch.0.logits.add(i) = i8::from(all_logits || i + 1 == n);
            }
        }
        let mut b = batch.0;
        b.n_tokens = n as i32;
        // SAFETY: a valid context and a fully initialized batch of `n <= n_batch` tokens whose
        // positions continue the sequence in the cache.
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), b) };
        if rc != 0 {
            return Err(LlamaError::Decode(rc));
        }
        Ok(())
    }

    /// Calls `f` with the logits of the `i`-th token of the last decode (which must have asked
    /// for them).
    fn with_logits<T>(&self, i: usize, f: impl FnOnce(&[f32]) -> T) -> Result<T, LlamaError> {
        let n_vocab = self.model.n_vocab();
        // SAFETY: a valid context; llama.cpp returns NULL for a row it has no logits for. A
        // non-NULL row holds n_vocab floats until the next decode on this context, which cannot
        // happen while `f` runs (`&self`).
        let row = unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32);
            if p.is_null() {
                return Err(LlamaError::Decode(-1));
            }
            std::slice::from_raw_parts(p, n_vocab)
        };
        Ok(f(row))
    }

    /// Negative log-likelihoods (nats) of each continuation's tokens given `prefix`, with the
    /// prefix decoded once: `out[k][i] = -ln p(continuations[k][i] | prefix,
    /// continuations[k][..i])`. The cache is cleared first; after each continuation it is cut
    /// back to the prefix. With F32 K/V and flash attention off ([`ContextOptions::training`])
    /// this equals [`Context::token_nlls`] on the concatenation (measured on SmolLM2); with
    /// llama.cpp's defaults (F16 K/V, flash attention) the split changes the rounding enough to
    /// move single tokens by up to about 0.2 nats.
    pub fn continuation_nlls(
        &mut self,
        prefix: &[i32],
        continuations: &[&[i32]],
    ) -> Result<Vec<Vec<f64>>, LlamaError> {
        let longest = continuations.iter().map(|c| c.len()).max().unwrap_or(0);
        if prefix.is_empty()
            || continuations.iter().any(|c| c.is_empty())
            || prefix.len() + longest > self.n_ctx as usize
        {
            return Err(LlamaError::Invalid(format!(
                "scoring needs a prefix and continuations of at least one token, {} in all at \
                 most, got {} + {longest}",
                self.n_ctx,
                prefix.len()
            )));
        }
        self.check_tokens(prefix)?;
        for c in continuations {
            self.check_tokens(c)?;
        }
        let p = prefix.len();
        // SAFETY: a valid context; clearing its memory (data too) before a fresh sequence.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) };
        self.decode_at(prefix, 0, false)?;
        // The prefix's last row predicts every continuation's first token: keep a copy.
        let last = self.with_logits(p - 1, <[f32]>::to_vec)?;
        let mut out = Vec::with_capacity(continuations.len());
        for (k, c) in continuations.iter().enumerate() {
            if k > 0 {
                // SAFETY: a valid context; removes positions p.. of sequence 0 (the previous
                // continuation), keeping the prefix. Always possible for a KV cache; a `false`
                // (a recurrent model's memory) is refused below.
                let cut = unsafe {
                    sys::llama_memory_seq_rm(
                        sys::llama_get_memory(self.ptr.as_ptr()),
                        0,
                        p as i32,
                        -1,
                    )
                };
                if !cut {
                    return Err(LlamaError::Invalid(
                        "this model's memory cannot be cut back to a prefix".into(),
                    ));
                }
            }
            let mut nlls = Vec::with_capacity(c.len());
            nlls.push(nll(&last, c[0] as usize));
            if c.len() > 1 {
                self.decode_at(&c[..c.len() - 1], p, true)?;
                for i in 0..c.len() - 1 {
                    nlls.push(self.with_logits(i, |row| nll(row, c[i + 1] as usize))?);
                }
            }
            out.push(nlls);
        }
        Ok(out)
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_init_from_model and is freed once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

/// `-ln softmax(row)[target]`, computed stably.
fn nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

/// Frees a `llama_batch` on drop.
struct Batch(sys::llama_batch);

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::nll;

    #[test]
    fn nll_is_log_softmax() {
        let row = [0.0f32, 0.0, 0.0, 0.0];
        assert!((nll(&row, 2) - 4f64.ln()).abs() < 1e-9);
        let row = [1000.0f32, 0.0];
        assert!(nll(&row, 0).abs() < 1e-9);
    }
}
