use multiproc::{Process, StartMethod};

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn smoke() {
    for m in StartMethod::ALL {
        let t = std::time::Instant::now();
        let p = Process::builder()
            .start_method(m)
            .start(double, 21)
            .unwrap();
        assert_eq!(p.join().unwrap(), 42, "{m}");
        eprintln!("{m}: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let p = Process::builder()
            .start_method(m)
            .start(double, 21)
            .unwrap();
        assert_eq!(p.join().unwrap(), 42, "{m}");
        eprintln!("{m}: {:?}", t.elapsed());
    }
}
