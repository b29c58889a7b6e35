//! Bytes a child could send its parent, fed to the parent's decoders: frames, then
//! messages. Must never panic, whatever the bytes, and never hand out a frame over the
//! limit.
//!
//! The first byte picks the limit, so that both small limits (many TooLarge paths) and
//! a large one (bodies that grow as bytes arrive) are explored.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = match pick % 4 {
        0 => 64,
        1 => 4096,
        2 => 1 << 20,
        _ => usize::MAX,
    };
    let _ = multiproc::wire::check_untrusted_stream(stream, max);

    // The frame decoder alone, fed in pieces whose sizes come from the data too.
    let mut decoder = multiproc::wire::FrameDecoder::new(max);
    let mut rest = stream;
    let mut step = usize::from(pick / 4) + 1;
    while !rest.is_empty() {
        let spare = decoder.spare();
        assert!(!spare.is_empty());
        let n = spare.len().min(rest.len()).min(step);
        spare[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        match decoder.advance(n) {
            Ok(Some(frame)) => assert!(frame.len() <= max),
            Ok(None) => {}
            Err(_) => break,
        }
        step = step.wrapping_mul(31).wrapping_add(7) % 4096 + 1;
    }
});
