//! The wire's decoders on random and hostile bytes: they never panic, never hand out a
//! frame over the limit, and never reserve memory for bytes that did not arrive.
//!
//! A quick, deterministic fuzzer (xorshift) that runs with every `cargo test`; the
//! coverage-guided one is `fuzz/` (`cargo fuzz run frames`).

use multiproc::wire::{FrameDecoder, FrameError, HEADER_LEN, check_untrusted_stream};

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn header(len: u64) -> [u8; HEADER_LEN] {
    len.to_le_bytes()
}

/// A hostile stream: random bytes, frames with garbage bodies, huge or off-by-one
/// lengths, truncations, all mixed.
fn hostile(rng: &mut Rng, max: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..rng.below(6) + 1 {
        match rng.below(8) {
            0 => {
                let len = rng.below(300) as usize;
                s.extend(rng.bytes(len));
            }
            1 | 2 => {
                let len = rng.below(max.min(2000) as u64 + 1);
                s.extend(header(len));
                s.extend(rng.bytes(len as usize));
            }
            3 => {
                let huge = [
                    u64::MAX,
                    1 << 62,
                    1 << 32,
                    (max as u64).saturating_add(1),
                    usize::MAX as u64,
                ];
                s.extend(header(huge[rng.below(huge.len() as u64) as usize]));
                let len = rng.below(64) as usize;
                s.extend(rng.bytes(len));
            }
            4 => {
                // A frame cut short.
                let len = rng.below(4096) + 1;
                s.extend(header(len));
                let cut = rng.below(len) as usize;
                s.extend(rng.bytes(cut));
            }
            5 => s.extend(header(max as u64)),
            6 => {
                // Postcard-ish: an enum tag, then a varint length claiming a lot.
                let body = [
                    rng.below(3) as u8,
                    0,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0x7f,
                ];
                s.extend(header(body.len() as u64));
                s.extend(body);
            }
            _ => s.extend(header(0)),
        }
    }
    if rng.below(4) == 0 && !s.is_empty() {
        // Flip a few bits anywhere.
        for _ in 0..rng.below(4) + 1 {
            let i = rng.below(s.len() as u64) as usize;
            s[i] ^= 1 << rng.below(8);
        }
    }
    s
}

/// Feeds `stream` to a decoder in random pieces; checks every invariant on the way.
/// Returns the frames, and the error that stopped it, if any.
fn feed(rng: &mut Rng, stream: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut claimed: Option<u64> = None;
    while !rest.is_empty() {
        let partial = d.partial_len();
        let spare = d.spare();
        assert!(!spare.is_empty(), "no room for the next byte");
        // Never more room than the current frame still needs, and never a big
        // allocation ahead of the bytes: at most 1 MiB, or twice what arrived.
        if let Some(len) = claimed {
            assert!(spare.len() as u64 <= len, "room beyond the frame");
            let arrived = partial - HEADER_LEN;
            assert!(
                spare.len() <= (1 << 20).max(arrived),
                "{} bytes reserved after {arrived} arrived",
                spare.len()
            );
        } else {
            assert!(spare.len() <= HEADER_LEN);
        }
        let step = match rng.below(4) {
            0 => 1,
            1 => rng.below(16) as usize + 1,
            _ => usize::MAX,
        };
        let n = spare.len().min(rest.len()).min(step);
        spare[..n].copy_from_slice(&rest[..n]);
        let header_before = partial < HEADER_LEN;
        let start = stream.len() - rest.len();
        rest = &rest[n..];
        match d.advance(n) {
            Ok(Some(frame)) => {
                assert!(
                    frame.len() <= max,
                    "a frame of {} over max {max}",
                    frame.len()
                );
                frames.push(frame);
                claimed = None;
                assert!(d.is_idle());
            }
            Ok(None) => {
                if header_before && d.partial_len() >= HEADER_LEN {
                    let end = start + n;
                    let h: [u8; 8] = stream[end - HEADER_LEN..end].try_into().unwrap();
                    claimed = Some(u64::from_le_bytes(h));
                }
            }
            Err(e) => {
                let FrameError::TooLarge { len, max: m } = &e;
                assert!(*len > max as u64 && *m == max as u64, "{e}");
                return (frames, Some(e));
            }
        }
    }
    (frames, None)
}

#[test]
fn decoder_survives_hostile_streams() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000 {
        // A limit of 1 MiB and up lets garbage headers reserve the decoder's first 1 MiB
        // chunk, which a debug build is slow to zero: those limits get fewer rounds.
        let max = match i % 50 {
            0 => 1 << 20,
            25 => usize::MAX,
            _ => [64, 1000, 4096, 65_536][i % 4],
        };
        let stream = hostile(&mut rng, max);
        feed(&mut rng, &stream, max);
        // The parent-side check (frames, then message decoding) on the same bytes.
        if let Err(e) = check_untrusted_stream(&stream, max) {
            assert!(!e.is_empty());
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for len in (0..2000).chain([4095, 4096, 4097, 65_536]) {
        let bytes = rng.bytes(len);
        // Without a limit a random header claims a huge frame and the decoder reserves
        // its first 1 MiB chunk: slow in a debug build, so only every 50th length.
        let unlimited = (len % 50 == 0).then_some(usize::MAX);
        for max in [64, 100_000].into_iter().chain(unlimited) {
            let _ = check_untrusted_stream(&bytes, max);
            feed(&mut rng, &bytes, max);
        }
    }
}

#[test]
fn huge_length_headers_cost_nothing() {
    let mut rng = Rng(7);
    for claim in [u64::MAX, 1 << 62, 1 << 40, (1 << 30) + 1] {
        // Over the limit: refused at the header, before any body is reserved.
        let mut s = header(claim).to_vec();
        s.extend(rng.bytes(100));
        let (frames, err) = feed(&mut rng, &s, 1 << 30);
        assert!(frames.is_empty());
        assert_eq!(
            err,
            Some(FrameError::TooLarge {
                len: claim,
                max: 1 << 30
            })
        );
        let e = check_untrusted_stream(&s, 1 << 30).unwrap_err();
        assert!(e.contains("exceeds"), "{e}");
        // No limit at all: memory still follows the bytes (checked inside `feed`).
        let (frames, err) = feed(&mut rng, &s, usize::MAX);
        assert!(frames.is_empty() && err.is_none());
    }
}

#[test]
fn well_formed_frames_survive_any_split() {
    let mut rng = Rng(2024);
    for _ in 0..300 {
        let max = rng.below(5000) as usize + 64;
        let bodies: Vec<Vec<u8>> = (0..rng.below(8))
            .map(|_| {
                let len = rng.below(max as u64 + 1) as usize;
                rng.bytes(len)
            })
            .collect();
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend(header(b.len() as u64));
            stream.extend(b);
        }
        let (frames, err) = feed(&mut rng, &stream, max);
        assert_eq!(err, None);
        assert_eq!(frames, bodies);
    }
}

#[test]
fn frame_of_exactly_max_passes_and_one_more_does_not() {
    let mut rng = Rng(1);
    for max in [64usize, 1000, 70_000] {
        let mut ok = header(max as u64).to_vec();
        ok.extend(vec![0xa5; max]);
        let (frames, err) = feed(&mut rng, &ok, max);
        assert_eq!((frames.len(), err), (1, None));
        let mut over = header(max as u64 + 1).to_vec();
        over.extend(vec![0xa5; max + 1]);
        let (frames, err) = feed(&mut rng, &over, max);
        assert!(frames.is_empty());
        assert!(matches!(err, Some(FrameError::TooLarge { len, .. }) if len == max as u64 + 1));
    }
}
