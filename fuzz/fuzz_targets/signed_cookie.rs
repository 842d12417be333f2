//! The signed envelope: any string is refused cleanly, and a genuine
//! cookie with any byte changed never decodes to other data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_layer::Key;
use session_layer::codec::SignedCodec;

fuzz_target!(|data: &[u8]| {
    let codec = SignedCodec::new(Key::from_bytes(&[1; 32]).unwrap().into());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = codec.decode("session", text, 1_800_000_000, 86_400);
    }
    // Flip one byte of a genuine cookie, chosen by the input.
    let mut map = serde_json::Map::new();
    map.insert("user".into(), 42.into());
    let genuine = codec.encode("session", &map, false, 1_800_000_000);
    if let (Some(&at), Some(&byte)) = (data.first(), data.get(1)) {
        let mut bytes = genuine.clone().into_bytes();
        let i = usize::from(at) % bytes.len();
        if bytes[i] != byte {
            bytes[i] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                if let Ok(decoded) = codec.decode("session", &text, 1_800_000_000, 86_400) {
                    assert_eq!(decoded.data, map, "a tampered cookie decoded to other data");
                }
            }
        }
    }
});
