//! The Cookie header split: any bytes, never a panic, bounded results.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((firsts, chunks, _overflow)) = session_layer::fuzzing::cookie_family(data) {
        assert!(firsts <= 4, "candidates are capped");
        assert!(
            chunks.windows(2).all(|w| w[0] < w[1]),
            "indices sorted and unique"
        );
        assert!(chunks.iter().all(|&i| (1..64).contains(&i)));
    }
});
