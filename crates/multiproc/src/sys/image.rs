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

/// The image offset of a plain `fn(A) -> R`, to name it inside a task's argument to a
/// worker of the same build (a pool's `map_reduce` sends its task and its combining
/// function this way). Only [`fn1_at`] with the same `A` and `R` turns it back.
pub(crate) fn fn1_offset<A, R>(f: fn(A) -> R) -> u64 {
    offset(f as usize)
}

/// The image offset of a plain `fn(A, B) -> R` (see [`fn1_offset`]).
pub(crate) fn fn2_offset<A, B, R>(f: fn(A, B) -> R) -> u64 {
    offset(f as usize)
}

/// The `fn(A) -> R` at image offset `at`, made by [`fn1_offset::<A, R>`] in a process
/// of this same build; `None` if `at` is outside this executable's code.
pub(crate) fn fn1_at<A, R>(at: u64) -> Option<fn(A) -> R> {
    let addr = code_address(at)?;
    // SAFETY: `at` reaches this function only inside the argument of a task, which a
    // worker runs only after proving its peer runs this same build (and, across
    // machines, after checking the message's HMAC); that peer made it with
    // `fn1_offset::<A, R>` in the same monomorphization of the same task (the task
    // that calls this names A and R, and the peer's copy of that task named the same),
    // so `addr` is a `fn(A) -> R` at the same offset of this identical image. The
    // bounds check keeps even a corrupted offset inside our own code.
    Some(unsafe { std::mem::transmute::<usize, fn(A) -> R>(addr) })
}

/// The `fn(A, B) -> R` at image offset `at` (see [`fn1_at`]).
pub(crate) fn fn2_at<A, B, R>(at: u64) -> Option<fn(A, B) -> R> {
    let addr = code_address(at)?;
    // SAFETY: as for `fn1_at`, with `fn2_offset::<A, B, R>` on the peer's side.
    Some(unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(addr) })
}

/// The address of image offset `at`, if it lies inside this executable's code.
fn code_address(at: u64) -> Option<usize> {
    let code_len = (text_end() - image_start()) as u64;
    (at < code_len).then(|| image_start() + at as usize)
}

/// The image offset of a plain `fn()`, under which a process of the same build finds
/// it again ([`fn_at`]): how a [`Barrier`](crate::Barrier)'s action travels with it.
pub(crate) fn fn_offset(f: fn()) -> u64 {
    offset(f as usize)
}

/// The `fn()` at image offset `offset` (made by [`fn_offset`]), or `None` if the offset
/// is outside this executable's code.
pub(crate) fn fn_at(offset: u64) -> Option<fn()> {
    let addr = code_address(offset)?;
    // SAFETY: such an offset reaches a process only inside a handle that came from a
    // process of this same build (values cross only between multiproc processes of one
    // build: the hello's build id, and for exec'd children the socket peer's pid and
    // uid, are checked before anything is decoded), where `fn_offset` made it from a
    // `fn()`, found at the same offset in this identical image. The bounds check keeps
    // even a corrupted offset inside our own code.
    Some(unsafe { std::mem::transmute::<usize, fn()>(addr) })
}
