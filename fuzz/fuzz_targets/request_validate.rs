//! Any bytes as a request body: parsing and validation must return Ok or a typed refusal with a
//! code and a message, never panic, for each generation, embeddings and Responses endpoint.
#![no_main]

use inhouse_formats::validate::{self, Limits, ValidationError};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    default_max_tokens: 512,
    max_tokens_cap: 4096,
    max_json_depth: 32,
    max_messages: 256,
    max_tools: Limits::DEFAULT_MAX_TOOLS,
    max_schema_bytes: Limits::DEFAULT_MAX_SCHEMA_BYTES,
    max_n: Limits::DEFAULT_MAX_N,
    max_top_logprobs: Limits::DEFAULT_MAX_TOP_LOGPROBS,
};

/// A refusal must say what is wrong: a stable code and a message (the API answers it as a 400).
fn check(e: ValidationError) {
    assert!(!e.code().is_empty(), "{e:?}");
    assert!(!e.to_string().is_empty(), "{e:?}");
}

fuzz_target!(|data: &[u8]| {
    match validate::parse_body(data, LIMITS.max_json_depth) {
        Ok(w) => {
            if let Err(e) = validate::validate_chat(w, 1000, &LIMITS) {
                check(e);
            }
        }
        Err(e) => check(e),
    }
    if let Ok(w) = validate::parse_body(data, LIMITS.max_json_depth) {
        if let Err(e) = validate::validate_completion(w, 1000, &LIMITS) {
            check(e);
        }
    }
    if let Ok(w) = validate::parse_body(data, LIMITS.max_json_depth) {
        if let Err(e) = validate::validate_embeddings(w) {
            check(e);
        }
    }
    if let Ok(w) = validate::parse_body(data, LIMITS.max_json_depth) {
        if let Err(e) = validate::validate_responses(w, 1000, &LIMITS) {
            check(e);
        }
    }
});
