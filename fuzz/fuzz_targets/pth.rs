//! Arbitrary bytes through the PyTorch checkpoint reader (zip and legacy):
//! an error or tensors, never a panic, a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tlab::formats::weights::pth::read_bytes(data);
});
