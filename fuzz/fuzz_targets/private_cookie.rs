//! The private (AEAD) envelope: any string is refused cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_layer::Key;
use session_layer::codec::PrivateCodec;

fuzz_target!(|data: &[u8]| {
    let codec = PrivateCodec::new(Key::from_bytes(&[1; 32]).unwrap().into());
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            codec
                .decode("session", text, 1_800_000_000, 86_400)
                .is_err()
                || text.len() > 60
        );
    }
});
