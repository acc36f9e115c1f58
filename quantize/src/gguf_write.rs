//! GGUF writer (work in progress).
