//! Ed25519 model signatures (work in progress).
