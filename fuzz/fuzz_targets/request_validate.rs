//! Any bytes as a request body: parsing and validation must return Ok or a 4xx error, never
//! panic, for each generation and embeddings endpoint.
#![no_main]

use inhouse::scheduler::{self, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    default_max_tokens: 512,
    max_tokens_cap: 4096,
    max_json_depth: 32,
    max_messages: 256,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = scheduler::parse_body(data, LIMITS.max_json_depth) {
        if let Err(e) = scheduler::validate_chat(w, 1000, &LIMITS) {
            assert!(e.status.is_client_error(), "{e:?}");
        }
    }
    if let Ok(w) = scheduler::parse_body(data, LIMITS.max_json_depth) {
        if let Err(e) = scheduler::validate_completion(w, 1000, &LIMITS) {
            assert!(e.status.is_client_error(), "{e:?}");
        }
    }
    if let Ok(w) = scheduler::parse_body(data, LIMITS.max_json_depth) {
        if let Err(e) = scheduler::validate_embeddings(w) {
            assert!(e.status.is_client_error(), "{e:?}");
        }
    }
});
