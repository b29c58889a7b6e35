//! This executable's code, and calling a task found in it by offset.
//!
//! A task crosses to a child as two offsets from the start of this executable's
//! image: its typed trampoline and the user's function. The child accepts them only
//! after (1) the parent proved it runs the same build (build id in the hello), (2) the
//! socket's peer was checked to be its parent with the same uid, and (3) both offsets
//! fall inside this executable's code. Only then are they turned back into pointers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::task::TaskRef;
use crate::wire::message::Failure;

unsafe extern "C" {
    // Defined by the linker (GNU ld and lld alike) for every executable.
    static __executable_start: u8;
    static etext: u8;
}

fn image_start() -> usize {
    (&raw const __executable_start) as usize
}

fn text_end() -> usize {
    (&raw const etext) as usize
}

type Trampoline = fn(usize, &[u8], &mut Vec<u8>) -> Result<(), Failure>;

fn trampoline<A: DeserializeOwned, R: Serialize>(
    function: usize,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    // SAFETY: `function` is the address of a `fn(A) -> R`: `entry_of::<A, R>` paired
    // this trampoline, monomorphized for exactly A and R, with a `fn(A) -> R`, and
    // `run` only calls a trampoline found through such a pair from the same build.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    crate::task::invoke(f, args, out)
}

fn offset(addr: usize) -> u64 {
    addr.wrapping_sub(image_start()) as u64
}

/// The offsets under which a child of the same build finds `f` and its trampoline.
pub(crate) fn entry_of<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> TaskRef {
    let t: Trampoline = trampoline::<A, R>;
    TaskRef {
        trampoline: offset(t as usize),
        function: offset(f as usize),
    }
}

/// Runs the task named by `entry` on `args`, appending its encoded result to `out`;
/// refuses an entry outside our code.
pub(crate) fn run(entry: TaskRef, args: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
    let code_len = (text_end() - image_start()) as u64;
    if entry.trampoline >= code_len || entry.function >= code_len {
        return Err(Failure::BadEntry);
    }
    let trampoline_addr = image_start() + entry.trampoline as usize;
    let function_addr = image_start() + entry.function as usize;
    // SAFETY: the caller (the worker loop) runs a `Run` only after the hello proved the
    // parent is the same build (same build id) and, for exec'd children, the socket
    // peer is our parent with our uid; such a parent made `entry` with `entry_of`, so
    // `trampoline` is the image offset of a `Trampoline`, valid at the same offset in
    // this identical image. The bounds check above keeps even a corrupted entry inside
    // our own code.
    let t: Trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline_addr) };
    t(function_addr, args, out)
}
