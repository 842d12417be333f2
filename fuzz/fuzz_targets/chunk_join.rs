//! Chunk joining: any first cookie and chunk set, never a panic, and a
//! joined value is exactly the announced pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == b';');
    let Some(first) = parts.next() else { return };
    let chunks: Vec<(usize, &[u8])> = parts
        .filter_map(|p| {
            p.split_first()
                .map(|(&i, rest)| (usize::from(i % 70), rest))
        })
        .collect();
    if let Some(joined) = session_layer::fuzzing::chunk_join(first, &chunks, 10) {
        let total: usize = first.len() + chunks.iter().map(|(_, c)| c.len()).sum::<usize>();
        assert!(joined.len() <= total, "joining never invents bytes");
    }
});
