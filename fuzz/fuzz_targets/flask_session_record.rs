//! Flask-Session's stored record (MessagePack or JSON): any bytes, never a
//! panic; what reads writes back to a record that reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    session_layer::fuzzing::flask_session_record(data);
});
