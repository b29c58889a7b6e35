//! Values of many types cross to a child and back, under every start method.

use multiproc::{Process, StartMethod};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

fn start<A, R>(method: StartMethod, f: fn(A) -> R, args: A) -> R
where
    A: Serialize + serde::de::DeserializeOwned,
    R: Serialize + serde::de::DeserializeOwned,
{
    let p = Process::builder()
        .start_method(method)
        .start(f, args)
        .unwrap_or_else(|e| panic!("{method}: start: {e}"));
    p.join().unwrap_or_else(|e| panic!("{method}: join: {e}"))
}

fn negate(x: i64) -> i64 {
    -x
}

fn widen(x: u8) -> u128 {
    u128::from(x) << 100
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn unit(_: ()) {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
    price: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Invoice {
    order: u64,
    items: u32,
    total: f64,
    kind: Kind,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Small,
    Bulk { discount_pct: u8 },
}

fn invoice(o: Order) -> Invoice {
    let items: u32 = o.lines.iter().map(|(_, n)| n).sum();
    Invoice {
        order: o.id,
        items,
        total: o.price * f64::from(items),
        kind: if items > 10 {
            Kind::Bulk { discount_pct: 5 }
        } else {
            Kind::Small
        },
    }
}

fn checked_div((a, b): (u32, u32)) -> Option<u32> {
    a.checked_div(b)
}

fn parse(s: String) -> Result<i32, String> {
    s.parse::<i32>().map_err(|e| format!("{s:?}: {e}"))
}

const TEN_MIB: usize = 10 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn make_bytes(len: usize) -> ByteBuf {
    ByteBuf::from(pattern(len, 7))
}

fn make_vec(len: usize) -> Vec<u8> {
    pattern(len, 9)
}

/// Checks a 10 MiB argument in the child and answers with its length and a checksum.
fn digest(b: ByteBuf) -> (usize, u64) {
    (b.len(), checksum(&b))
}

fn digest_vec(b: Vec<u8>) -> (usize, u64) {
    (b.len(), checksum(&b))
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn integers() {
    for m in StartMethod::ALL {
        assert_eq!(start(m, negate, 42), -42, "{m}");
        assert_eq!(start(m, negate, i64::MIN + 1), i64::MAX, "{m}");
        assert_eq!(start(m, widen, 255), 255u128 << 100, "{m}");
    }
}

#[test]
fn strings_and_unit() {
    for m in StartMethod::ALL {
        assert_eq!(
            start(m, shout, "grüße, wörld".into()),
            "GRÜSSE, WÖRLD",
            "{m}"
        );
        assert_eq!(start(m, shout, String::new()), "", "{m}");
        start(m, unit, ());
    }
}

#[test]
fn structs_and_enums() {
    let order = Order {
        id: 7,
        customer: "Ada".into(),
        lines: vec![("nuts".into(), 4), ("bolts".into(), 9)],
        note: Some("rush".into()),
        price: 0.25,
    };
    for m in StartMethod::ALL {
        assert_eq!(
            start(m, invoice, order.clone()),
            Invoice {
                order: 7,
                items: 13,
                total: 3.25,
                kind: Kind::Bulk { discount_pct: 5 }
            },
            "{m}"
        );
    }
}

#[test]
fn options_and_results() {
    for m in StartMethod::ALL {
        assert_eq!(start(m, checked_div, (10, 3)), Some(3), "{m}");
        assert_eq!(start(m, checked_div, (10, 0)), None, "{m}");
        assert_eq!(start(m, parse, "-17".into()), Ok(-17), "{m}");
        let err = start(m, parse, "x1".into()).unwrap_err();
        assert!(err.contains("invalid digit"), "{m}: {err}");
    }
}

#[test]
fn ten_mib_result() {
    let want = pattern(TEN_MIB, 7);
    for m in StartMethod::ALL {
        let got = start(m, make_bytes, TEN_MIB);
        assert!(got.as_slice() == want.as_slice(), "{m}: ByteBuf differs");
    }
    // A typed Vec<u8> goes element by element (slower than ByteBuf) but arrives whole.
    let want = pattern(TEN_MIB, 9);
    for m in StartMethod::ALL {
        let got = start(m, make_vec, TEN_MIB);
        assert!(got == want, "{m}: Vec<u8> differs");
    }
}

#[test]
fn ten_mib_argument() {
    let bytes = pattern(TEN_MIB, 3);
    let want = (TEN_MIB, checksum(&bytes));
    for m in StartMethod::ALL {
        assert_eq!(start(m, digest, ByteBuf::from(bytes.clone())), want, "{m}");
        assert_eq!(start(m, digest_vec, bytes.clone()), want, "{m}");
    }
}

#[test]
fn closures_that_capture_nothing_are_tasks() {
    for m in StartMethod::ALL {
        assert_eq!(start(m, |(a, b): (u64, u64)| a * b, (6, 7)), 42, "{m}");
    }
}

/// Serializes as an error: a value that cannot cross.
#[derive(Debug, Deserialize)]
struct Unsendable(u32);

impl Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unsendable refuses to be serialized",
        ))
    }
}

/// Serializes fine, refuses to be deserialized.
#[derive(Debug, Serialize)]
struct Unreadable(u32);

impl<'de> Deserialize<'de> for Unreadable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "Unreadable refuses to be deserialized",
        ))
    }
}

fn takes_unsendable(x: Unsendable) -> u32 {
    x.0
}

fn returns_unsendable(x: u32) -> Unsendable {
    Unsendable(x)
}

fn takes_unreadable(x: Unreadable) -> u32 {
    x.0
}

fn returns_unreadable(x: u32) -> Unreadable {
    Unreadable(x)
}

#[test]
fn values_that_cannot_cross_are_reported() {
    use multiproc::Error;
    for m in StartMethod::ALL {
        let b = || Process::builder().start_method(m);
        // The argument fails to encode in the parent: no child at all.
        match b().start(takes_unsendable, Unsendable(1)) {
            Err(Error::Encode { type_name, reason }) => {
                assert!(type_name.contains("Unsendable"), "{m}: {type_name}");
                // postcard drops a custom error's text: "Serde Serialization Error".
                assert!(!reason.is_empty(), "{m}");
            }
            other => panic!("{m}: {other:?}"),
        }
        // The result fails to encode in the child.
        match b().start(returns_unsendable, 2).unwrap().join() {
            Err(Error::Encode { type_name, reason }) => {
                assert!(type_name.contains("Unsendable"), "{m}: {type_name}");
                assert!(reason.contains("in the child"), "{m}: {reason}");
            }
            other => panic!("{m}: {other:?}"),
        }
        // The argument fails to decode in the child.
        match b().start(takes_unreadable, Unreadable(3)).unwrap().join() {
            Err(Error::Decode { type_name, reason }) => {
                assert!(type_name.contains("Unreadable"), "{m}: {type_name}");
                assert!(reason.contains("in the child"), "{m}: {reason}");
            }
            other => panic!("{m}: {other:?}"),
        }
        // The result fails to decode in the parent.
        match b().start(returns_unreadable, 4).unwrap().join() {
            Err(Error::Decode { type_name, reason }) => {
                assert!(type_name.contains("Unreadable"), "{m}: {type_name}");
                assert!(!reason.is_empty(), "{m}");
            }
            other => panic!("{m}: {other:?}"),
        }
    }
}
