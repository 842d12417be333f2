//! The session id parser and the signed id cookie: anything that is not a
//! well-formed, correctly signed id is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_layer::Key;
use session_layer::store::SessionId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(id) = SessionId::parse(text) {
            assert_eq!(id.as_str(), text);
            assert_eq!(text.len(), 43);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }
    let keys = Key::from_bytes(&[3; 32]).unwrap().into();
    assert!(!session_layer::fuzzing::verify_id(&keys, data) || data.len() == 66);
});
