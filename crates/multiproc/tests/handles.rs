//! `Handle`: any OS handle as a task's argument or result, through a `Process` and a
//! `Pool`, under every start method.

use std::io::{Read, Seek, Write};

use multiproc::Handle;
use multiproc::prelude::*;

fn scratch_file(tag: String) -> Handle {
    let path = std::env::temp_dir().join(format!("multiproc-handles-{}-{tag}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    // Unlinked at once: the open file lives on through the handle only.
    std::fs::remove_file(&path).unwrap();
    f.write_all(tag.as_bytes()).unwrap();
    Handle::from(f)
}

fn read_back(h: Handle) -> String {
    let mut f = std::fs::File::from(h);
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

fn length_of(h: Handle) -> u64 {
    std::fs::File::from(h).metadata().unwrap().len()
}

#[test]
fn a_file_comes_back_from_a_process_under_every_start_method() {
    for method in [
        StartMethod::ForkServer,
        StartMethod::Fork,
        StartMethod::Spawn,
    ] {
        let p = Process::builder()
            .start_method(method)
            .start(scratch_file, format!("{method:?}"))
            .unwrap();
        assert_eq!(read_back(p.join().unwrap()), format!("{method:?}"));
    }
}

#[test]
fn handles_go_both_ways_through_a_pool() {
    let pool = Pool::new(2).unwrap();
    let made = pool
        .map(scratch_file, (0..20).map(|i| format!("pool-{i}")))
        .unwrap();
    let texts: Vec<String> = made.into_iter().map(read_back).collect();
    assert_eq!(texts[7], "pool-7");
    let files: Vec<Handle> = (0..5)
        .map(|i| scratch_file(format!("arg-{i}-{}", "x".repeat(i))))
        .collect();
    let lens = pool.map(length_of, files).unwrap();
    assert_eq!(lens, [6, 7, 8, 9, 10]);
}
