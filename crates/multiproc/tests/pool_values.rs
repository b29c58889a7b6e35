//! Big and small values through a pool, both ways. Alone in its binary: it counts this
//! process's descriptors, which another test's pool would change.

use multiproc::prelude::*;

/// Echoes a blob back, reversed, so that a mix-up of calls shows.
fn reverse(b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    let mut v = b.into_vec();
    v.reverse();
    serde_bytes::ByteBuf::from(v)
}

fn blob(len: usize, seed: u8) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>(),
    )
}

/// Arguments and results past 1 MiB travel in sealed memory files, small ones inline,
/// and a chunk may mix both: every value arrives whole, in its place, under every start
/// method, and no memory file is left open (the test's descriptors are counted).
#[test]
fn big_and_small_values_cross_both_ways() {
    let sizes = [3 << 20, 10, 0, 5 << 20, 1 << 20, (1 << 20) + 1, 70_000];
    for method in StartMethod::ALL {
        let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        for chunk in [ChunkSize::Fixed(1), ChunkSize::Fixed(7)] {
            let pool = Pool::builder()
                .processes(2)
                .start_method(method)
                .chunk_size(chunk)
                .build()
                .unwrap();
            let args: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| blob(n, i as u8))
                .collect();
            let out = pool.map(reverse, args.clone()).unwrap();
            for (i, (a, r)) in args.iter().zip(&out).enumerate() {
                let mut want = a.to_vec();
                want.reverse();
                assert!(
                    r.as_slice() == want.as_slice(),
                    "{method} {chunk:?}: call {i} ({} bytes)",
                    a.len()
                );
            }
        }
        let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(
            fds_after <= fds_before + 2,
            "{method}: {fds_before} descriptors before, {fds_after} after"
        );
    }
}
