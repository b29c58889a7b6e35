//! This executable's code, and calling a task found in it by offset.
//!
//! A task crosses to a child as two offsets from the start of this executable's
//! image: its typed trampoline and the user's function. The child accepts them only
//! after (1) the parent proved it runs the same build (build id in the hello), (2) the
//! socket's peer was checked to be its parent with the same uid, and (3) both offsets
//! fall inside this executable's code. Only then are they turned back into pointers.

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// What a worker does with a task once it has it typed: the seam between this module
/// (which alone turns offsets back into functions) and the worker loop (which decodes
/// arguments and encodes results).
pub(crate) trait Invoke {
    fn invoke<A: DeserializeOwned, R: Serialize>(&mut self, f: fn(A) -> R);
}

fn trampoline<A: DeserializeOwned, R: Serialize, C: Invoke>(function: usize, ctx: &mut C) {
    // SAFETY: `function` is the address of a `fn(A) -> R`: `entry_of::<A, R, C>` paired
    // this trampoline, monomorphized for exactly A and R, with a `fn(A) -> R`, and
    // `call` only calls a trampoline found through such a pair from the same build.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    ctx.invoke(f)
}

fn offset(addr: usize) -> u64 {
    addr.wrapping_sub(image_start()) as u64
}

/// The image offsets (trampoline, function) under which a worker of the same build
/// finds `f`, to be called with a context of type `C`.
pub(crate) fn entry_of<A: DeserializeOwned, R: Serialize, C: Invoke>(f: fn(A) -> R) -> (u64, u64) {
    let t: fn(usize, &mut C) = trampoline::<A, R, C>;
    (offset(t as usize), offset(f as usize))
}

/// What a manager does with a method of a shared object, `fn(&mut T, A) -> R`, once it
/// has it typed (the second entry kind: see `managers`).
pub(crate) trait InvokeMethod {
    fn invoke_method<T: 'static, A: DeserializeOwned, R: Serialize>(
        &mut self,
        f: fn(&mut T, A) -> R,
    );
}

fn method_trampoline<T: 'static, A: DeserializeOwned, R: Serialize, C: InvokeMethod>(
    function: usize,
    ctx: &mut C,
) {
    // SAFETY: `function` is the address of a `fn(&mut T, A) -> R`:
    // `method_entry_of::<T, A, R, C>` paired this trampoline, monomorphized for exactly
    // T, A and R, with such a function, and `call` only calls a trampoline found through
    // such a pair from the same build.
    let f: fn(&mut T, A) -> R = unsafe { std::mem::transmute::<usize, fn(&mut T, A) -> R>(function) };
    ctx.invoke_method(f)
}

/// The image offsets (trampoline, function) under which a manager of the same build
/// finds the method `f`, to be called with a context of type `C`.
pub(crate) fn method_entry_of<T: 'static, A: DeserializeOwned, R: Serialize, C: InvokeMethod>(
    f: fn(&mut T, A) -> R,
) -> (u64, u64) {
    let t: fn(usize, &mut C) = method_trampoline::<T, A, R, C>;
    (offset(t as usize), offset(f as usize))
}

/// What a manager does with the constructor of a shared object, `fn(A) -> T` (the
/// third entry kind).
pub(crate) trait InvokeCreate {
    fn invoke_create<A: DeserializeOwned, T: Send + 'static>(&mut self, f: fn(A) -> T);
}

fn create_trampoline<A: DeserializeOwned, T: Send + 'static, C: InvokeCreate>(
    function: usize,
    ctx: &mut C,
) {
    // SAFETY: `function` is the address of a `fn(A) -> T`: `create_entry_of::<A, T, C>`
    // paired this trampoline, monomorphized for exactly A and T, with such a function,
    // and `call` only calls a trampoline found through such a pair from the same build.
    let f: fn(A) -> T = unsafe { std::mem::transmute::<usize, fn(A) -> T>(function) };
    ctx.invoke_create(f)
}

/// The image offsets (trampoline, function) under which a manager of the same build
/// finds the constructor `f`, to be called with a context of type `C`.
pub(crate) fn create_entry_of<A: DeserializeOwned, T: Send + 'static, C: InvokeCreate>(
    f: fn(A) -> T,
) -> (u64, u64) {
    let t: fn(usize, &mut C) = create_trampoline::<A, T, C>;
    (offset(t as usize), offset(f as usize))
}

/// Calls the entry at image offsets (`trampoline`, `function`) with `ctx`; `false`
/// (and nothing called) if either offset is outside this executable's code.
///
/// `C` is the context type the entry was made for: a worker calls tasks with its
/// `Invocation`, a manager calls methods and constructors each with its own context.
pub(crate) fn call<C>(trampoline: u64, function: u64, ctx: &mut C) -> bool {
    let code_len = (text_end() - image_start()) as u64;
    if trampoline >= code_len || function >= code_len {
        return false;
    }
    let trampoline_addr = image_start() + trampoline as usize;
    let function_addr = image_start() + function as usize;
    // SAFETY: the caller (the worker loop) runs a `Run` only after the hello proved the
    // parent is the same build (same build id) and, for exec'd children, the socket
    // peer is our parent with our uid; such a parent made the offsets with `entry_of`
    // for this same `C`, so `trampoline` is the image offset of a `fn(usize, &mut C)`,
    // valid at the same offset in this identical image. The bounds check above keeps
    // even a corrupted entry inside our own code. A manager calls an entry only for a
    // client that proved it holds the manager's key (handshake), signed the request
    // (per-message HMAC) and said it runs this same build (hello, checked before any
    // request), and only with the context its entry kind is made for
    // (`method_entry_of` for methods, `create_entry_of` for constructors); the key is
    // documented as granting that right, as Python's authkey grants unpickling.
    let t = unsafe { std::mem::transmute::<usize, fn(usize, &mut C)>(trampoline_addr) };
    t(function_addr, ctx);
    true
}
