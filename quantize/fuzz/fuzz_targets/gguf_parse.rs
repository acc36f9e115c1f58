//! Feeds arbitrary bytes to the GGUF parser: it must return an error or a file, never panic,
//! hang or allocate without bound. Whatever parses also goes through the `inspect` reports, so
//! the accessors are exercised on odd but valid files.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use inhouse_formats::{gguf, inspect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = gguf::parse(Cursor::new(data), data.len() as u64) {
        let path = Path::new("fuzz-input.gguf");
        let _ = inspect::text_report(path, &file);
        let _ = inspect::json_report(path, &file);
        let _ = (
            file.context_length(),
            file.file_type_name(),
            file.n_params(),
        );
    }
});
