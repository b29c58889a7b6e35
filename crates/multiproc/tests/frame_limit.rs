//! The maximum frame size, both ways: an argument over it is refused at start, a result
//! over it is reported as an encoding error, never a hang or a crash.
//!
//! Its own test binary with a single test: the limit is process-wide.

mod common;

use multiproc::{
    DEFAULT_MAX_FRAME_SIZE, Error, Process, StartMethod, max_frame_size, set_max_frame_size,
};
use serde_bytes::ByteBuf;

fn len(b: ByteBuf) -> usize {
    b.len()
}

fn make(n: usize) -> ByteBuf {
    ByteBuf::from(vec![1u8; n])
}

/// Restores the default limit even if an assertion fails.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        set_max_frame_size(DEFAULT_MAX_FRAME_SIZE);
    }
}

#[test]
fn frames_over_the_limit_are_refused_both_ways() {
    let _restore = Restore;
    assert_eq!(max_frame_size(), DEFAULT_MAX_FRAME_SIZE);
    set_max_frame_size(4096);
    assert_eq!(max_frame_size(), 4096);
    let me = std::process::id();
    let children_before = common::children_of(me).len();

    for m in StartMethod::ALL {
        let start = Process::builder().start_method(m);

        // An argument just under the limit goes; one over it is refused.
        let p = start
            .clone()
            .start(len, ByteBuf::from(vec![0; 3000]))
            .unwrap();
        assert_eq!(p.join().unwrap(), 3000, "{m}");
        match start.clone().start(len, ByteBuf::from(vec![0; 10_000])) {
            Err(Error::FrameTooLarge { len, max, .. }) => {
                assert!(len > 10_000, "{m}: {len}");
                assert_eq!(max, 4096, "{m}");
            }
            other => panic!("{m}: {other:?}"),
        }
        let err = start
            .clone()
            .start(len, ByteBuf::from(vec![0; 10_000]))
            .unwrap_err();
        assert!(err.to_string().contains("set_max_frame_size"), "{m}: {err}");

        // A result over the limit (the child inherits it): an error that says so.
        match start.clone().start(make, 10_000).unwrap().join() {
            Err(e @ Error::FrameTooLarge { .. }) => {
                let Error::FrameTooLarge { len, max, .. } = &e else {
                    unreachable!()
                };
                assert!(*len > 10_000 && *max == 4096, "{m}: {e}");
                assert!(e.to_string().contains("result"), "{m}: {e}");
            }
            other => panic!("{m}: a too-large result gave {other:?}"),
        }
        assert_eq!(start.start(make, 100).unwrap().join().unwrap().len(), 100);
    }
    // A refused start leaves no child behind.
    assert!(common::children_of(me).len() <= children_before.max(1));

    // Back to the default: the same 10,000 bytes go through.
    set_max_frame_size(DEFAULT_MAX_FRAME_SIZE);
    for m in StartMethod::ALL {
        let p = Process::builder()
            .start_method(m)
            .start(len, ByteBuf::from(vec![0; 10_000]))
            .unwrap();
        assert_eq!(p.join().unwrap(), 10_000, "{m}");
    }
}
