//! Arbitrary text through the recipe parser and validator: an error or a
//! recipe, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tlab::recipe::parse(text, std::path::Path::new("/fuzz/recipe.toml"));
    }
});
