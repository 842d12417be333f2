//! Encode + decode of each codec at 64 B, 1 KB and 16 KB of session data,
//! beside the bare primitives on the same bytes (serde_json, one MAC or
//! AEAD pass, base64), so the codec's overhead is a ratio.
//!
//! cargo bench --manifest-path bench/Cargo.toml --bench codec

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use session_layer::Key;
use session_layer::SessionData;
use session_layer::codec::{FlaskCodec, PrivateCodec, SignedCodec};
use std::hint::black_box;

const NOW: u64 = 1_800_000_000;

/// A session of about `size` bytes of JSON: a user id and text that
/// compresses no better than real data (pseudo-random words).
fn session(size: usize) -> SessionData {
    let mut text = String::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while text.len() + 24 < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push(char::from(b'a' + (x % 26) as u8));
        if x.is_multiple_of(7) {
            text.push(' ');
        }
    }
    let mut map = Map::new();
    map.insert("user".into(), Value::from(42));
    map.insert("note".into(), Value::from(text));
    map
}

fn primitives_signed(data: &SessionData, key: &Hmac<sha2::Sha256>) -> SessionData {
    let mut bytes = serde_json::to_vec(data).unwrap();
    let mut mac = key.clone();
    mac.update(&bytes);
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    let text = URL_SAFE_NO_PAD.encode(&bytes);
    let bytes = URL_SAFE_NO_PAD.decode(text).unwrap();
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let mut mac = key.clone();
    mac.update(body);
    mac.verify_slice(tag).unwrap();
    serde_json::from_slice(body).unwrap()
}

fn primitives_private(data: &SessionData, cipher: &XChaCha20Poly1305) -> SessionData {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).unwrap();
    let mut bytes = serde_json::to_vec(data).unwrap();
    let tag = cipher
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            b"session",
            InOutBuf::from(&mut bytes[..]),
        )
        .unwrap();
    bytes.extend_from_slice(&tag);
    let text = URL_SAFE_NO_PAD.encode(&bytes);
    let mut bytes = URL_SAFE_NO_PAD.decode(text).unwrap();
    let split = bytes.len() - 16;
    let (body, tag) = bytes.split_at_mut(split);
    let tag = chacha20poly1305::Tag::try_from(&*tag).unwrap();
    cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce),
            b"session",
            InOutBuf::from(&mut *body),
            &tag,
        )
        .unwrap();
    serde_json::from_slice(body).unwrap()
}

fn primitives_flask(data: &SessionData, key: &Hmac<sha1::Sha1>) -> SessionData {
    let json = serde_json::to_vec(data).unwrap();
    let mut text = URL_SAFE_NO_PAD.encode(&json);
    let mut mac = key.clone();
    mac.update(text.as_bytes());
    text.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut text);
    let (payload, sig) = text.rsplit_once('.').unwrap();
    let mut mac = key.clone();
    mac.update(payload.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap())
        .unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let key = Key::from_bytes(&[9; 32]).unwrap();
    let signed = SignedCodec::new(key.clone().into());
    let private = PrivateCodec::new(key.into());
    let flask = FlaskCodec::new("a flask secret key of some length").unwrap();
    let hmac256 = Hmac::<sha2::Sha256>::new_from_slice(&[9; 32]).unwrap();
    let hmac1 = Hmac::<sha1::Sha1>::new_from_slice(&[9; 20]).unwrap();
    let cipher = XChaCha20Poly1305::new(&[9u8; 32].into());

    let mut group = c.benchmark_group("encode+decode");
    for size in [64, 1024, 16 * 1024] {
        let data = session(size);
        group.bench_with_input(BenchmarkId::new("signed", size), &data, |b, data| {
            b.iter(|| {
                let value = signed.encode("session", black_box(data), false, NOW);
                signed.decode("session", &value, NOW, 3600).unwrap()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("primitives: HMAC-SHA256", size),
            &data,
            |b, data| b.iter(|| primitives_signed(black_box(data), &hmac256)),
        );
        group.bench_with_input(BenchmarkId::new("private", size), &data, |b, data| {
            b.iter(|| {
                let value = private.encode("session", black_box(data), false, NOW);
                private.decode("session", &value, NOW, 3600).unwrap()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("primitives: XChaCha20-Poly1305", size),
            &data,
            |b, data| b.iter(|| primitives_private(black_box(data), &cipher)),
        );
        group.bench_with_input(BenchmarkId::new("flask", size), &data, |b, data| {
            b.iter(|| {
                let value = flask.encode(black_box(data), false, NOW);
                flask.decode(&value, NOW, 3600).unwrap()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("primitives: HMAC-SHA1", size),
            &data,
            |b, data| b.iter(|| primitives_flask(black_box(data), &hmac1)),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
