//! `multiproc::connection`: Listener, Client and Connection over real sockets, with
//! clients in real child processes.

mod common;

use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use multiproc::connection::{Address, AuthKey, Client, Connection, Listener};
use multiproc::{Error, Pipe, PipeEnd, PipeWriter, Process, wait_ready};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn key() -> AuthKey {
    AuthKey::new(KEY.to_vec()).unwrap()
}

/// A client in a child process: connects to `address` with `key` (if any), sends
/// `hello`, and returns what the listener answers, or the error as text.
fn client_child((address, key, hello): (String, Option<Vec<u8>>, String)) -> Result<u64, String> {
    let key = key.map(|k| AuthKey::new(k).unwrap());
    let mut conn: Connection<String, u64> =
        Client::connect(&address, key.as_ref()).map_err(|e| format!("{e:?}"))?;
    conn.send(&hello).map_err(|e| e.to_string())?;
    conn.recv().map_err(|e| e.to_string())
}

fn serve_one(listener: &Listener) {
    let mut conn: Connection<u64, String> = listener.accept().unwrap();
    assert!(conn.is_authenticated() || listener.address().is_unix());
    let hello = conn.recv().unwrap();
    conn.send(&(hello.len() as u64)).unwrap();
}

#[test]
fn unix_path_with_a_client_process_and_no_leaked_socket_file() {
    let dir = common::TempDir::new("conn-unix");
    let path = dir.path().join("app.sock");
    let listener = Listener::bind(&path, Some(&key())).unwrap();
    assert_eq!(listener.address(), &Address::Unix(path.clone()));
    let child = Process::start(
        client_child,
        (
            path.display().to_string(),
            Some(KEY.to_vec()),
            "hello".into(),
        ),
    )
    .unwrap();
    serve_one(&listener);
    assert_eq!(child.join().unwrap(), Ok(5));
    assert!(path.exists());
    drop(listener);
    assert!(!path.exists(), "the listener left its socket file behind");
}

#[test]
fn abstract_address_without_a_key() {
    let listener = Listener::bind("@", None).unwrap();
    let Address::Abstract(name) = listener.address() else {
        panic!("{:?}", listener.address())
    };
    assert!(!name.is_empty());
    let child = Process::start(
        client_child,
        (listener.address().to_string(), None, "abc".into()),
    )
    .unwrap();
    serve_one(&listener);
    assert_eq!(child.join().unwrap(), Ok(3));
}

#[test]
fn tcp_port_zero_with_a_client_process() {
    let listener = Listener::bind("127.0.0.1:0", Some(&key())).unwrap();
    let Address::Tcp(a) = listener.address() else {
        panic!()
    };
    assert_ne!(a.port(), 0, "the bound port is reported");
    let child = Process::start(
        client_child,
        (
            listener.address().to_string(),
            Some(KEY.to_vec()),
            "four".into(),
        ),
    )
    .unwrap();
    serve_one(&listener);
    assert_eq!(child.join().unwrap(), Ok(4));
}

/// A connected pair over `address`, the client in a thread.
fn pair<S, R>(address: &str, key: Option<&AuthKey>) -> (Connection<S, R>, Connection<R, S>)
where
    S: 'static,
    R: 'static,
{
    let listener = Listener::bind(address, key).unwrap();
    let address = listener.address().clone();
    let k = key.cloned();
    let t = std::thread::spawn(move || Client::connect::<R, S>(&address, k.as_ref()).unwrap());
    let here = listener.accept().unwrap();
    (here, t.join().unwrap())
}

#[test]
fn typed_values_both_ways_and_bytes_with_offset() {
    for address in ["@", "127.0.0.1:0"] {
        let key = key();
        let (mut a, mut b) = pair::<String, Vec<u32>>(address, Some(&key));
        a.send(&"x".repeat(100_000)).unwrap();
        assert_eq!(b.recv().unwrap().len(), 100_000);
        b.send(&vec![1, 2, 3]).unwrap();
        assert_eq!(a.recv().unwrap(), [1, 2, 3]);

        a.send_bytes(b"raw bytes").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.recv_bytes_into(&mut buf, 4).unwrap(), 9);
        assert_eq!(&buf[4..13], b"raw bytes");
        assert_eq!(&buf[..4], [0; 4]);
        // Too long for the room after the offset: the message comes back in the error.
        a.send_bytes(&[7u8; 20]).unwrap();
        match b.recv_bytes_into(&mut buf, 4) {
            Err(Error::BufferTooShort { room, message }) => {
                assert_eq!(room, 12);
                assert_eq!(message, [7u8; 20]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            b.recv_bytes_into(&mut buf, 17).is_err(),
            "offset past the end"
        );
        // A typed message read raw is its encoding; raw bytes sent are what arrives.
        b.send(&vec![5]).unwrap();
        assert_eq!(a.recv_bytes().unwrap(), [1, 5]);
        drop(a);
        assert!(b.recv().unwrap_err().is_closed());
    }
}

#[test]
fn poll_and_recv_timeouts() {
    let (mut a, mut b) = pair::<u8, u8>("@", None);
    let t = Instant::now();
    assert!(!b.poll(Duration::from_millis(100)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(
        b.recv_timeout(Duration::from_millis(50))
            .unwrap_err()
            .is_timeout()
    );
    assert_eq!(b.try_recv().unwrap(), None);
    a.send(&9).unwrap();
    assert!(b.poll(Duration::from_secs(10)).unwrap());
    assert_eq!(b.recv().unwrap(), 9);
}

#[test]
fn accept_times_out() {
    let listener = Listener::bind("@", None).unwrap();
    let t = Instant::now();
    let err = listener
        .accept_timeout::<u8, u8>(Duration::from_millis(150))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_wrong_key_fails_on_both_ends() {
    for address in ["@", "127.0.0.1:0"] {
        let listener = Listener::bind(address, Some(&key())).unwrap();
        let t = Instant::now();
        let child = Process::start(
            client_child,
            (
                listener.address().to_string(),
                Some(b"another key, also 32 bytes long!".to_vec()),
                "hi".into(),
            ),
        )
        .unwrap();
        let err = listener.accept::<u64, String>().unwrap_err();
        assert!(
            matches!(&err, Error::AuthenticationFailed { detail, .. } if detail.contains("keys differ")),
            "{err}"
        );
        let child_err = child.join().unwrap().unwrap_err();
        assert!(
            child_err.starts_with("AuthenticationFailed") && child_err.contains("key differs"),
            "{child_err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no waiting on a timeout"
        );
        // The listener goes on serving.
        let child = Process::start(
            client_child,
            (
                listener.address().to_string(),
                Some(KEY.to_vec()),
                "ok".into(),
            ),
        )
        .unwrap();
        serve_one(&listener);
        assert_eq!(child.join().unwrap(), Ok(2));
    }
}

#[test]
fn a_key_on_one_side_only_fails_on_both() {
    // Keyed client, open listener: the client refuses an unauthenticated listener.
    let open = Listener::bind("@", None).unwrap();
    let address = open.address().clone();
    let t = std::thread::spawn(move || Client::connect::<u8, u8>(&address, Some(&key())));
    let err = open.accept::<u8, u8>().unwrap_err();
    assert!(
        matches!(&err, Error::AuthenticationFailed { detail, .. } if detail.contains("refuses")),
        "{err}"
    );
    let err = t.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err}");

    // Open client, keyed listener: both fail.
    let keyed = Listener::bind("@", Some(&key())).unwrap();
    let address = keyed.address().clone();
    let t = std::thread::spawn(move || Client::connect::<u8, u8>(&address, None));
    let err = keyed.accept::<u8, u8>().unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err}");
    let err = t.join().unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::AuthenticationFailed { detail, .. } if detail.contains("requires a key")),
        "{err}"
    );
}

#[test]
fn a_silent_peer_fails_after_the_handshake_timeout() {
    // A client that connects and never answers the challenge.
    let listener = Listener::builder("127.0.0.1:0")
        .key(&key())
        .handshake_timeout(Duration::from_millis(300))
        .bind()
        .unwrap();
    let Address::Tcp(a) = *listener.address() else {
        panic!()
    };
    let _silent = std::net::TcpStream::connect(a).unwrap();
    let t = Instant::now();
    let err = listener.accept::<u8, u8>().unwrap_err();
    assert!(
        matches!(&err, Error::AuthenticationFailed { detail, .. } if detail.contains("within")),
        "{err}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(5));

    // A "listener" that accepts and never greets.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t = Instant::now();
    let err = Client::builder(mute.local_addr().unwrap())
        .key(&key())
        .timeout(Duration::from_millis(300))
        .connect::<u8, u8>()
        .unwrap_err();
    assert!(
        matches!(&err, Error::AuthenticationFailed { detail, .. } if detail.contains("greeting")),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // A peer that speaks another protocol is told apart from a wrong key.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = mute.accept().unwrap();
        s.write_all(&(5u64.to_le_bytes())).unwrap();
        s.write_all(b"HTTP/").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let err = Client::connect::<u8, u8>(mute_addr, Some(&key())).unwrap_err();
    assert!(
        err.to_string().contains("not a multiproc listener"),
        "{err}"
    );
    t.join().unwrap();
}

#[test]
fn tcp_without_a_key_is_refused_unless_asked_for() {
    let err = Listener::bind("127.0.0.1:0", None).unwrap_err();
    assert!(
        matches!(&err, Error::Connection { detail, .. } if detail.contains("allow_unauthenticated")),
        "{err}"
    );
    let keyed = Listener::bind("127.0.0.1:0", Some(&key())).unwrap();
    let err = Client::connect::<u8, u8>(keyed.address(), None).unwrap_err();
    assert!(
        matches!(&err, Error::Connection { detail, .. } if detail.contains("allow_unauthenticated")),
        "{err}"
    );

    let open = Listener::builder("127.0.0.1:0")
        .allow_unauthenticated()
        .bind()
        .unwrap();
    let client = Client::builder(open.address()).allow_unauthenticated();
    let t = std::thread::spawn(move || {
        let mut c: Connection<u8> = client.connect().unwrap();
        c.send(&1).unwrap();
    });
    let mut conn: Connection<u8> = open.accept().unwrap();
    assert!(!conn.is_authenticated());
    assert_eq!(conn.recv().unwrap(), 1);
    t.join().unwrap();
}

/// Connects to `path`, takes a file handle, writes to it.
fn write_through_handle(path: String) -> Result<(), String> {
    let mut conn: Connection<()> = Client::connect(&path, None).map_err(|e| e.to_string())?;
    let fd: OwnedFd = conn.recv_handle().map_err(|e| e.to_string())?;
    let mut file = std::fs::File::from(fd);
    file.write_all(b"written by the child")
        .map_err(|e| e.to_string())
}

#[test]
fn send_handle_to_a_child_process() {
    let dir = common::TempDir::new("conn-handle");
    let sock = dir.path().join("h.sock");
    let listener = Listener::bind(&sock, None).unwrap();
    let child = Process::start(write_through_handle, sock.display().to_string()).unwrap();
    let mut conn: Connection<()> = listener.accept().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("data"))
        .unwrap();
    conn.send_handle(&file).unwrap();
    child.join().unwrap().unwrap();
    let mut text = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "written by the child");

    // A message that is not a handle is an error, not a hang or a panic.
    let (mut a, mut b) = pair::<u8, u8>("@", None);
    a.send(&1).unwrap();
    assert!(b.recv_handle().is_err());
}

#[test]
fn handles_over_tcp_are_a_clear_error() {
    let (mut a, _b) = pair::<u8, u8>("127.0.0.1:0", Some(&key()));
    let err = a.send_handle(std::io::stdin()).unwrap_err();
    assert!(err.to_string().contains("TCP"), "{err}");
    assert!(a.recv_handle().unwrap_err().to_string().contains("TCP"));
    let (mut c, _d) = pair::<PipeEnd<u8>, u8>("127.0.0.1:0", Some(&key()));
    let (end, _other) = Pipe::<u8>::new().unwrap();
    let err = c.send(&end).unwrap_err();
    assert!(err.to_string().contains("TCP"), "{err}");
}

fn produce(mut w: PipeWriter<u32>) {
    for i in 0..100 {
        w.send(&i).unwrap();
    }
}

#[test]
fn one_way_pipe() {
    let (mut r, w) = Pipe::<u32>::one_way().unwrap();
    let p = Process::start(produce, w).unwrap();
    let got: Vec<u32> = std::iter::from_fn(|| r.recv().ok()).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    p.join().unwrap();
    assert!(r.recv().unwrap_err().is_closed());

    let (r, mut w) = Pipe::<u32>::one_way().unwrap();
    assert!(!r.poll(Duration::from_millis(20)).unwrap());
    drop(r);
    assert!(w.send(&1).unwrap_err().is_closed());
}

#[test]
fn wait_ready_on_listeners_and_connections() {
    let listener = Listener::bind("@", None).unwrap();
    assert!(
        wait_ready(&[&listener], Some(Duration::from_millis(50)))
            .unwrap()
            .is_empty()
    );
    let address = listener.address().clone();
    let t = std::thread::spawn(move || {
        let mut c: Connection<u8> = Client::connect(&address, None).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        c.send(&3).unwrap();
        c
    });
    assert_eq!(
        wait_ready(&[&listener], Some(Duration::from_secs(10))).unwrap(),
        [0]
    );
    let mut conn: Connection<u8> = listener.accept().unwrap();
    let (r, mut w) = Pipe::<u8>::one_way().unwrap();
    let ready = wait_ready(&[&listener, &conn, &r], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, [1]);
    assert_eq!(conn.recv().unwrap(), 3);
    w.send(&4).unwrap();
    let ready = wait_ready(&[&listener, &conn, &r], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, [2]);
    let _c = t.join().unwrap();
}

fn echo_on(mut conn: Connection<u64>) {
    while let Ok(v) = conn.recv() {
        conn.send(&(v * 2)).unwrap();
    }
}

#[test]
fn a_connection_passes_to_a_child_process() {
    let (mut a, b) = pair::<u64, u64>("@", Some(&key()));
    let child = Process::start(echo_on, b).unwrap();
    a.send(&21).unwrap();
    assert_eq!(a.recv().unwrap(), 42);
    drop(a);
    child.join().unwrap();
}

#[test]
fn many_clients_from_many_threads() {
    let listener = std::sync::Arc::new(Listener::bind("127.0.0.1:0", Some(&key())).unwrap());
    let client = Client::builder(listener.address()).key(&key());
    let acceptors: Vec<_> = (0..2)
        .map(|_| {
            let l = listener.clone();
            std::thread::spawn(move || {
                for _ in 0..8 {
                    let mut c: Connection<u64> = l.accept().unwrap();
                    let v = c.recv().unwrap();
                    c.send(&(v + 1)).unwrap();
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut c: Connection<u64> = client.connect().unwrap();
                c.send(&i).unwrap();
                assert_eq!(c.recv().unwrap(), i + 1);
            })
        })
        .collect();
    for t in clients.into_iter().chain(acceptors) {
        t.join().unwrap();
    }
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
    let dir = common::TempDir::new("conn-stale");
    let path = dir.path().join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves its file
    assert!(path.exists());
    let live = Listener::bind(&path, None).unwrap();
    let err = Listener::bind(&path, None).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(live);
    assert!(!path.exists());
    // Nobody there: a clear error, not a hang.
    let err = Client::connect::<u8, u8>(&path, None).unwrap_err();
    assert!(err.to_string().contains("is a listener running"), "{err}");
    let err = Listener::bind("app.sock", None).unwrap_err();
    assert!(err.to_string().contains("not an address"), "{err}");
    // Not a socket: never removed.
    std::fs::write(&path, b"data").unwrap();
    assert!(Listener::bind(&path, None).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[test]
fn no_descriptor_leaks() {
    // Warm up (lazy statics, the fork server).
    drop(pair::<u8, u8>("@", Some(&key())));
    let before = common::fd_count();
    for _ in 0..5 {
        let (mut a, mut b) = pair::<u8, u8>("127.0.0.1:0", Some(&key()));
        a.send(&1).unwrap();
        b.recv().unwrap();
        let l = Listener::bind("@", Some(&key())).unwrap();
        let _ = l.accept_timeout::<u8, u8>(Duration::from_millis(1));
    }
    assert_eq!(common::fd_count(), before);
}
