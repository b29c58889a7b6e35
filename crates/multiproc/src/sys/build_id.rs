//! This build's identity: the ELF `NT_GNU_BUILD_ID` of this executable, or failing
//! that a hash of its bytes. A parent's hello carries it, and a worker (or a manager,
//! or a cluster node) of another build refuses to act on its offsets.
//!
//! Safe code: it only reads `/proc/self/exe`; it lives in `sys` beside `image`, whose
//! offsets it vouches for, so that the wire's hello can carry it without reaching up.

use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

/// This build's identity: the GNU build id of the executable, or failing that a hash of
/// its bytes. Computed once per process.
pub(crate) fn build_id() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| {
        let path = "/proc/self/exe";
        match std::fs::File::open(path) {
            Ok(mut f) => gnu_build_id(&mut f).unwrap_or_else(|| content_hash(&mut f)),
            Err(_) => b"unknown".to_vec(),
        }
    })
}

/// Hex form of a build id, for messages.
pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn content_hash(f: &mut std::fs::File) -> Vec<u8> {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    if f.seek(SeekFrom::Start(0)).is_err() {
        return b"unknown".to_vec();
    }
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish().to_le_bytes().to_vec()
}

/// Finds `NT_GNU_BUILD_ID` in the PT_NOTE segments of a 64-bit little-endian ELF file.
fn gnu_build_id(f: &mut std::fs::File) -> Option<Vec<u8>> {
    fn read_at(f: &mut std::fs::File, off: u64, len: usize) -> Option<Vec<u8>> {
        if len > 1 << 20 {
            return None;
        }
        let mut b = vec![0u8; len];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut b).ok()?;
        Some(b)
    }
    let u16_at = |b: &[u8], o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
    };
    let u32_at = |b: &[u8], o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |b: &[u8], o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
    };
    let eh = read_at(f, 0, 64)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 0x20)?;
    let phentsize = u16_at(&eh, 0x36)? as usize;
    let phnum = u16_at(&eh, 0x38)? as usize;
    if phentsize < 56 {
        return None;
    }
    let ph = read_at(f, phoff, phentsize * phnum)?;
    for i in 0..phnum {
        let p = &ph[i * phentsize..];
        if u32_at(p, 0)? != 4 {
            continue; // not PT_NOTE
        }
        let notes = read_at(f, u64_at(p, 8)?, u64_at(p, 32)? as usize)?;
        let mut o = 0usize;
        while o + 12 <= notes.len() {
            let namesz = u32_at(&notes, o)? as usize;
            let descsz = u32_at(&notes, o + 4)? as usize;
            let kind = u32_at(&notes, o + 8)?;
            let name_at = o + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let next = desc_at + descsz.div_ceil(4) * 4;
            if kind == 3 && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
                return Some(notes.get(desc_at..desc_at + descsz)?.to_vec());
            }
            o = next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_build_id() {
        let id = build_id();
        assert!(id.len() >= 8, "build id {}", hex(id));
        assert_eq!(build_id(), id);
    }
}
