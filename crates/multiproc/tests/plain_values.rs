//! Plain data (integers, floats, bool, char, and arrays and tuples of one integer or
//! float type) travels as its bytes: every primitive type round-trips through a
//! `Process` (argument and result) and a `Pool` (both ways, in chunks), under every
//! start method, with values at their edges.

use multiproc::prelude::*;

fn echo<T>(x: T) -> T {
    x
}

fn not(b: bool) -> bool {
    !b
}

fn next_char(c: char) -> char {
    char::from_u32(c as u32 + 1).unwrap_or('?')
}

fn negate(x: f64) -> f64 {
    -x
}

fn sum_and_max(xs: [u32; 3]) -> (u32, u32) {
    (xs.iter().sum(), xs.iter().copied().max().unwrap_or(0))
}

fn widen(x: u8) -> i128 {
    -(x as i128) * 1_000_000_000_000
}

macro_rules! round_trip {
    ($pool:expr, $method:expr, $($t:ty => [$($v:expr),*]),* $(,)?) => {$(
        let values: Vec<$t> = vec![$($v),*];
        let back = $pool.map(echo::<$t>, values.clone()).unwrap();
        assert_eq!(back, values, "{} through a Pool ({:?})", stringify!($t), $method);
        let p = Process::builder().start_method($method).start(echo::<$t>, values[1]).unwrap();
        assert_eq!(p.join().unwrap(), values[1], "{} through a Process", stringify!($t));
    )*};
}

#[test]
fn every_primitive_crosses_both_ways() {
    for method in [
        StartMethod::ForkServer,
        StartMethod::Fork,
        StartMethod::Spawn,
    ] {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap();
        round_trip!(pool, method,
            u8 => [0, 1, u8::MAX],
            u16 => [0, 7, u16::MAX],
            u32 => [0, 1 << 31, u32::MAX],
            u64 => [0, 1 << 63, u64::MAX],
            u128 => [0, 1 << 127, u128::MAX],
            usize => [0, 12345, usize::MAX],
            i8 => [i8::MIN, -1, i8::MAX],
            i16 => [i16::MIN, -1, i16::MAX],
            i32 => [i32::MIN, -1, i32::MAX],
            i64 => [i64::MIN, -1, i64::MAX],
            i128 => [i128::MIN, -1, i128::MAX],
            isize => [isize::MIN, 0, isize::MAX],
            f32 => [f32::MIN_POSITIVE, -0.5, f32::MAX],
            f64 => [f64::MIN, 1e-300, f64::INFINITY],
            bool => [false, true, true],
            char => ['a', 'ß', '🦀'],
            [f64; 3] => [[0.0, -1.5, f64::MAX], [1.0, 2.0, 3.0], [f64::MIN, 0.0, 1e-300]],
            [u8; 32] => [[0; 32], [7; 32], [u8::MAX; 32]],
            (u64, u64) => [(0, u64::MAX), (1, 2), (u64::MAX, 0)],
            (i32, i32, i32, i32) => [(i32::MIN, -1, 0, i32::MAX), (1, 2, 3, 4), (0, 0, 0, 0)],
            // Mixed tuples keep serde (their layout may have padding).
            (u8, u64) => [(0, u64::MAX), (255, 1), (1, 0)],
        );
        let nan = pool.map(echo::<f64>, [f64::NAN]).unwrap();
        assert!(nan[0].is_nan());
        assert_eq!(pool.map(not, [true, false]).unwrap(), [false, true]);
        assert_eq!(pool.map(next_char, ['a', 'y']).unwrap(), ['b', 'z']);
        assert_eq!(pool.map(negate, [1.5, -2.0]).unwrap(), [-1.5, 2.0]);
        // Arrays in, tuples out.
        assert_eq!(
            pool.map(sum_and_max, [[1u32, 5, 2], [9, 0, 0]]).unwrap(),
            [(8, 5), (9, 9)]
        );
        // Plain argument, plain result of another width.
        assert_eq!(
            pool.map(widen, [0u8, 255]).unwrap(),
            [0, -255_000_000_000_000]
        );
    }
}

#[test]
fn a_long_map_of_plain_values_keeps_its_order() {
    let pool = Pool::new(2).unwrap();
    let n = 300_000u64;
    let out = pool.map(echo::<u64>, 0..n).unwrap();
    assert!(out.iter().enumerate().all(|(i, &v)| v == i as u64));
    let results = pool.map_results(echo::<u32>, 0..1000u32).unwrap();
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == i as u32)
    );
}

fn bits(x: f64) -> u64 {
    x.to_bits()
}

fn to_u64(x: u32) -> u64 {
    u64::from(x) << 1
}

#[test]
fn a_map_between_plain_types_of_one_size_returns_its_arguments_vector() {
    let pool = Pool::new(2).unwrap();
    let n = 100_000;
    let floats: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
    let want: Vec<u64> = floats.iter().map(|x| x.to_bits()).collect();
    let at = floats.as_ptr() as usize;
    let out = pool.map(bits, floats).unwrap();
    assert_eq!(out, want);
    // The results were written over the arguments: no second vector.
    assert_eq!(out.as_ptr() as usize, at);
    // Another size: a result vector of its own, the same values.
    let out = pool.map(to_u64, 0..1000u32).unwrap();
    assert_eq!(out, (0..1000u64).map(|x| x << 1).collect::<Vec<_>>());
    // From an iterator: collected once, and that vector is the result.
    let out = pool.map(echo::<u64>, 0..50_000u64).unwrap();
    assert!(out.iter().enumerate().all(|(i, &v)| v == i as u64));
}

static MARKER: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// About 50 µs a call; call 600 ends its worker the first time it runs (the marker
/// directory says it ran).
fn slow_double_dying_once(x: u64) -> u64 {
    if x == 600
        && let Some(m) = MARKER.get()
        && std::fs::create_dir(m).is_ok()
    {
        std::process::exit(3);
    }
    std::thread::sleep(std::time::Duration::from_micros(50));
    x * 2
}

#[test]
fn results_take_their_arguments_place_even_when_a_worker_dies() {
    let dir = std::env::temp_dir().join(format!("multiproc-in-place-{}", std::process::id()));
    let _ = std::fs::remove_dir(&dir);
    MARKER.set(dir.clone()).unwrap();
    // A chunk of 1,024 calls of 50 µs is answered in pieces (every 10 ms), and kept
    // whole until its last piece: the first pieces' results wait for their arguments
    // to be free. The worker that dies at call 600 leaves its answered pieces in, and
    // its other calls run again elsewhere.
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::Fork)
        .retries(1)
        .chunk_size(ChunkSize::Fixed(1024))
        .build()
        .unwrap();
    let args: Vec<u64> = (0..1200).collect();
    let at = args.as_ptr() as usize;
    let out = pool.map(slow_double_dying_once, args);
    let died = dir.exists();
    let _ = std::fs::remove_dir(&dir);
    let out = out.unwrap();
    assert!(died, "call 600 ended its first worker");
    assert_eq!(out, (0..1200).map(|x| x * 2).collect::<Vec<u64>>());
    assert_eq!(out.as_ptr() as usize, at);
    // Chunks of a few calls keep a result vector of their own (cheaper per chunk).
    let small = Pool::builder()
        .processes(2)
        .chunk_size(ChunkSize::Fixed(4))
        .build()
        .unwrap();
    let args: Vec<u64> = (0..100).collect();
    let at = args.as_ptr() as usize;
    let out = small.map(echo::<u64>, args).unwrap();
    assert_eq!(out, (0..100).collect::<Vec<u64>>());
    assert_ne!(out.as_ptr() as usize, at);
}
