//! The in-memory retrieval core of the knowledge collections (issue 20): chunking, attribute
//! filters, BM25, exact vector search and their fusion. Pure: no I/O, no llama.cpp, no storage.

pub mod chunk;
pub mod filter;
