//! Mutation testing of the checkpoint readers (cargo-fuzz needs a nightly
//! toolchain this project cannot fetch, so this is the stable stand-in):
//! thousands of corrupted variants of real legacy and zip `.pth` files must
//! give an error or a result — never a panic, a hang or a huge allocation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(src: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            // Flip a byte.
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            // Overwrite with an extreme value (sizes, counts).
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)];
            }
            // Truncate.
            2 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            // Duplicate a slice (repeated opcodes, nested structures).
            3 if b.len() > 2 => {
                let i = rng.below(b.len() - 1);
                let j = (i + 1 + rng.below(16)).min(b.len());
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            // Delete a slice.
            _ if b.len() > 2 => {
                let i = rng.below(b.len() - 1);
                let j = (i + 1 + rng.below(16)).min(b.len());
                b.drain(i..j);
            }
            _ => {}
        }
    }
    b
}

static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn corrupted_checkpoints_never_panic() {
    // Count every panic, even one the reader catches internally: the reader
    // should reject bad input before anything panics.
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!("panic: {info}");
    }));
    let mut rng = Lcg(0x5eed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut runs = 0usize;
    let mut ok = 0usize;
    for name in ["legacy_small.pth", "zip_small.pth"] {
        let src = fixture(name);
        for _ in 0..10_000 {
            let bytes = mutate(&src, &mut rng);
            let result = std::panic::catch_unwind(|| tlab::formats::weights::pth::read_bytes(&bytes));
            match result {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(msg)) => assert!(!msg.is_empty()),
                Err(_) => panic!("reader panicked on a mutation of {name}: {:?}", &bytes[..bytes.len().min(64)]),
            }
            runs += 1;
            if Instant::now() > deadline {
                break;
            }
        }
    }
    let _ = std::panic::take_hook();
    let panics = PANICS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{runs} mutated checkpoints, {ok} still parsed, {panics} panics");
    assert_eq!(panics, 0, "the reader panicked internally");
    assert!(runs >= 1000);
}
