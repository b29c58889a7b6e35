//! `multiproc::connection`: Listener, Client and Connection over real sockets, with
//! clients in real child processes.

mod common;

use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
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

/// A Unix listener that never accepts, with a backlog of 0: the kernel queues one
/// connection, and a second `connect(2)` waits for room.
fn stuck_listener(name: &str) -> OwnedFd {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        fd.as_raw_fd(),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    fd
}

/// Runs `f` on a thread and waits at most 20 s for it: a hang fails the test.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the call hung (it should have timed out)")
}

#[test]
fn connecting_to_a_listener_that_does_not_accept_times_out() {
    let name = format!("multiproc-test-stuck-{}", std::process::id());
    let _stuck = stuck_listener(&name);
    let address = format!("@{name}");
    // Fills the backlog.
    let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let filler = std::os::unix::net::UnixStream::connect_addr(&sa).unwrap();
    let a = address.clone();
    let (err, took) = within(move || {
        let t = Instant::now();
        let r = Client::builder(&a)
            .timeout(Duration::from_millis(300))
            .connect::<u8, u8>();
        (r.unwrap_err(), t.elapsed())
    });
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("backlog"), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(filler);
}

#[test]
fn one_deadline_covers_connecting_and_the_handshake() {
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    let name = format!("multiproc-test-deadline-{}", std::process::id());
    let stuck = UnixListener::from(stuck_listener(&name));
    let sa = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _filler = UnixStream::connect_addr(&sa).unwrap();
    let address = format!("@{name}");
    let client = std::thread::spawn(move || {
        let t = Instant::now();
        let r = Client::builder(&address)
            .timeout(Duration::from_millis(1000))
            .connect::<u8, u8>();
        (r.unwrap_err(), t.elapsed())
    });
    // Room for the client after 600 ms; then it waits for a greeting that never comes.
    std::thread::sleep(Duration::from_millis(600));
    let _taken = stuck.accept().unwrap();
    let (err, took) = client.join().unwrap();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    // Two deadlines (one for connect, a fresh one for the handshake) would take 1.6 s.
    assert!(took < Duration::from_millis(1400), "{took:?}: {err}");
}

#[test]
fn no_deadline_at_all_is_a_duration_max_timeout() {
    let listener = Listener::builder("@")
        .key(&key())
        .handshake_timeout(Duration::MAX)
        .bind()
        .unwrap();
    let address = listener.address().clone();
    let t = std::thread::spawn(move || {
        let mut c: Connection<u8> = Client::builder(&address)
            .key(&key())
            .timeout(Duration::MAX)
            .connect()
            .unwrap();
        c.send(&9).unwrap();
    });
    let mut conn: Connection<u8> = listener.accept().unwrap();
    assert_eq!(conn.recv().unwrap(), 9);
    t.join().unwrap();
}

#[test]
fn binding_a_live_listeners_path_does_not_disturb_it() {
    let dir = common::TempDir::new("conn-live");
    let path = dir.path().join("s.sock");
    let live = Listener::bind(&path, Some(&key())).unwrap();
    for _ in 0..3 {
        let err = Listener::bind(&path, Some(&key())).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
    }
    // The failed binds reached nothing: no client is waiting to be accepted.
    match live.accept_timeout::<u8, u8>(Duration::from_millis(200)) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected no client, got {other:?}"),
    }
    drop(live);
    assert!(!path.exists());
    assert!(!dir.path().join("s.sock.lock").exists());
}

fn hold_listener(path: String) {
    let _l = Listener::bind(path.as_str(), None).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_listener_killed_in_its_process_leaves_a_path_that_can_be_bound_again() {
    let dir = common::TempDir::new("conn-killed");
    let path = dir.path().join("s.sock");
    let holder = Process::start(hold_listener, path.to_string_lossy().into_owned()).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < until, "the child never bound");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(Listener::bind(&path, None).is_err(), "it is live");
    holder.kill().unwrap();
    assert!(holder.join().is_err());
    assert!(path.exists(), "killed: its socket file stays");
    let l = Listener::bind(&path, None).unwrap();
    drop(l);
    assert!(!path.exists());
}

#[test]
fn tcp_connections_probe_a_silent_peer() {
    use std::os::fd::AsFd;
    let (a, b) = pair::<u8, u8>("127.0.0.1:0", Some(&key()));
    for conn in [a.as_fd(), b.as_fd()] {
        use nix::sys::socket::{getsockopt, sockopt};
        assert!(getsockopt(&conn, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&conn, sockopt::TcpKeepIdle).unwrap(), 10);
        assert_eq!(getsockopt(&conn, sockopt::TcpKeepInterval).unwrap(), 5);
        assert_eq!(getsockopt(&conn, sockopt::TcpKeepCount).unwrap(), 3);
        assert_eq!(getsockopt(&conn, sockopt::TcpUserTimeout).unwrap(), 30_000);
    }
}

/// As user `nobody`: connects to `address` without a key, `allow` saying whether to
/// accept a listener of another user; then sends 1. The error as text.
fn connect_as_nobody((address, allow): (String, bool)) -> Result<(), String> {
    nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).map_err(|e| e.to_string())?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(|e| e.to_string())?;
    let mut b = Client::builder(address.as_str());
    if allow {
        b = b.allow_other_users();
    }
    let mut c: Connection<u8> = b.connect().map_err(|e| e.to_string())?;
    c.send(&1).map_err(|e| e.to_string())
}

#[test]
fn a_keyless_unix_listener_accepts_only_its_own_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let strict = Listener::bind("@", None).unwrap();
    // The client allows us, but we do not allow it.
    let c = Process::start(connect_as_nobody, (strict.address().to_string(), true)).unwrap();
    let err = strict.accept::<u8, u8>().unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("allow_other_users"), "{err}");
    let _ = c.join();
    // A client of another user refuses our listener unless it allows it.
    let open = Listener::builder("@").allow_other_users().bind().unwrap();
    let address = open.address().to_string();
    let c = Process::start(connect_as_nobody, (address.clone(), false)).unwrap();
    let _ = open.accept::<u8, u8>(); // the client leaves during the handshake
    let err = c.join().unwrap().unwrap_err();
    assert!(err.contains("allow_other_users"), "{err}");
    let c = Process::start(connect_as_nobody, (address, true)).unwrap();
    let mut conn: Connection<u8> = open.accept().unwrap();
    assert_eq!(conn.recv().unwrap(), 1);
    c.join().unwrap().unwrap();
}

#[test]
fn a_frame_over_the_limit_breaks_the_connection_for_good() {
    use std::os::fd::AsFd;
    fn garbage_then_a_message(fd: std::os::fd::BorrowedFd<'_>) {
        // A header announcing far more than the limit, then what looks like a whole
        // frame (a postcard `5u8`): after the refused header, it is the refused
        // frame's body, never a message.
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend(1u64.to_le_bytes());
        bytes.push(5);
        nix::unistd::write(fd, &bytes).unwrap();
    }
    let (a, mut b) = pair::<u8, u8>("@", Some(&key()));
    garbage_then_a_message(a.as_fd());
    for _ in 0..3 {
        let err = b.recv().unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }), "{err:?}");
    }
    assert!(matches!(b.recv_bytes(), Err(Error::FrameTooLarge { .. })));
    // The same on a pipe.
    let (p, mut q) = Pipe::<u8>::new().unwrap();
    garbage_then_a_message(p.as_fd());
    for _ in 0..3 {
        let err = q.recv().unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }), "{err:?}");
    }
    drop(a);
}
