//! Flask's envelope (base64, zlib, tagged JSON): any string, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_layer::codec::FlaskCodec;

fuzz_target!(|data: &[u8]| {
    let codec = FlaskCodec::new("fuzz").unwrap();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = codec.decode(text, 1_800_000_000, 86_400);
    }
});
