# The Python side of `multiproc bench`'s CPython cases (driven by python.rs).
#
# Run as `python3 -c <this> JOB WORKERS [ARGS...]`. It starts one multiprocessing.Pool
# with Python's default start method, prepares the job's inputs, answers
# "ready <start method>", then for each line read on stdin performs ONE repetition,
# timed here with perf_counter_ns (inputs built and results checked outside that),
# and answers "ok <nanoseconds>" or "error <message>" on one line. End of stdin ends it.

import multiprocessing
import sys
import time

# The task functions live in a module built from source, not in __main__: a `-c`
# script's __main__ cannot be imported again by spawn or forkserver workers, so the
# pool's initializer (the builtin exec, which pickles by name) builds the same module
# in every worker, whatever the start method. Pickled tasks name it and find it there.
TASKS = r'''
import zlib

def double(x):
    return x * 2

def length(b):
    return len(b)

def ones(n):
    return b"\x01" * n

def compress6(block):
    return zlib.compress(block, 6)

def count_file(path):
    import collections
    with open(path) as f:
        return dict(collections.Counter(f.read().split()))

def work(piece):
    # The tutorial's loop, one addition per number, as a Python user writes it.
    start, end = piece
    total = 0
    for i in range(start, end):
        total += i
    return total

def _die_with_parent():
    # A process outliving its killed parent would wait on its pipe forever.
    try:
        import ctypes
        PR_SET_PDEATHSIG, SIGKILL = 1, 9
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, SIGKILL)
    except Exception:
        pass

_die_with_parent()
'''

MODULE = "multiproc_bench_tasks"
INSTALL = (
    "import sys, types\n"
    f"m = types.ModuleType({MODULE!r})\n"
    f"exec({TASKS!r}, m.__dict__)\n"
    f"sys.modules[{MODULE!r}] = m\n"
)


def read_exactly(stream, n):
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"expected {n} bytes of input, got {len(data)}")
    return data


def tiny_map(pool, t, args, stdin):
    n = int(args[0])
    chunksize = None if args[1] == "auto" else int(args[1])
    want = [2 * i for i in range(n)]

    def rep():
        start = time.perf_counter_ns()
        out = pool.map(t.double, range(n), chunksize)
        ns = time.perf_counter_ns() - start
        if out != want:
            raise ValueError("wrong results from a map of x -> 2x")
        return ns

    return rep


def apply(pool, t, args, stdin):
    trips = int(args[0])

    def rep():
        start = time.perf_counter_ns()
        for i in range(trips):
            if pool.apply(t.double, (i,)) != 2 * i:
                raise ValueError(f"apply(double, {i}) gave a wrong answer")
        return time.perf_counter_ns() - start

    return rep


def bytes_argument(pool, t, args, stdin):
    n = int(args[0])
    data = b"\x01" * n

    def rep():
        start = time.perf_counter_ns()
        got = pool.apply(t.length, (data,))
        ns = time.perf_counter_ns() - start
        if got != n:
            raise ValueError(f"the worker saw {got} bytes, not {n}")
        return ns

    return rep


def bytes_result(pool, t, args, stdin):
    n = int(args[0])
    want = b"\x01" * n

    def rep():
        start = time.perf_counter_ns()
        got = pool.apply(t.ones, (n,))
        ns = time.perf_counter_ns() - start
        if got != want:
            raise ValueError("wrong bytes from the worker")
        return ns

    return rep


def zlib_map(pool, t, args, stdin):
    import zlib

    count, size = int(args[0]), int(args[1])
    # The blocks come from the Rust side, so both compress the very same bytes.
    data = read_exactly(stdin, count * size)
    blocks = [data[i * size:(i + 1) * size] for i in range(count)]
    del data

    def rep():
        start = time.perf_counter_ns()
        out = pool.map(t.compress6, blocks)
        ns = time.perf_counter_ns() - start
        if len(out) != count or any(
            zlib.decompress(c) != b for c, b in zip(out, blocks)
        ):
            raise ValueError("compressed blocks do not decompress to their input")
        return ns

    return rep


def tutorial(pool, t, args, stdin):
    want = int(args[0])
    pieces = [tuple(map(int, p.split(":"))) for p in args[1].split(",")]

    def rep():
        start = time.perf_counter_ns()
        total = sum(pool.map(t.work, pieces))
        ns = time.perf_counter_ns() - start
        if total != want:
            raise ValueError(f"wrong total {total}, want {want}")
        return ns

    return rep


def _corpus(args):
    import os
    directory, files = args[0], int(args[1])
    return [os.path.join(directory, f"{i:03}.txt") for i in range(files)]


def _merge(parts):
    import collections
    total = collections.Counter()
    for part in parts:
        total.update(part)
    return total


def wordcount(pool, t, args, stdin):
    paths = _corpus(args)
    want = _merge(map(t.count_file, paths))

    def rep():
        start = time.perf_counter_ns()
        total = _merge(pool.map(t.count_file, paths))
        ns = time.perf_counter_ns() - start
        if total != want:
            raise ValueError("wrong word counts")
        return ns

    return rep


def wordcount_seq(pool, t, args, stdin):
    paths = _corpus(args)
    want = _merge(map(t.count_file, paths))

    def rep():
        start = time.perf_counter_ns()
        total = _merge(map(t.count_file, paths))
        ns = time.perf_counter_ns() - start
        if total != want:
            raise ValueError("wrong word counts")
        return ns

    return rep


def manager_get(pool, t, args, stdin):
    trips = int(args[0])
    manager = multiprocessing.Manager()
    d = manager.dict()
    d[1] = 2

    def rep():
        start = time.perf_counter_ns()
        for _ in range(trips):
            if d[1] != 2:
                raise ValueError("d[1] gave a wrong value")
        return time.perf_counter_ns() - start

    rep.manager = manager  # alive as long as the case
    return rep


def manager_insert(pool, t, args, stdin):
    n = int(args[0])
    manager = multiprocessing.Manager()
    d = manager.dict()

    def rep():
        d.clear()
        start = time.perf_counter_ns()
        for i in range(n):
            d[i] = i
        ns = time.perf_counter_ns() - start
        if len(d) != n:
            raise ValueError("the dict lost entries")
        return ns

    rep.manager = manager
    return rep


JOBS = {
    "tiny-map": tiny_map,
    "apply": apply,
    "bytes-argument": bytes_argument,
    "bytes-result": bytes_result,
    "zlib": zlib_map,
    "tutorial": tutorial,
    "wordcount": wordcount,
    "wordcount-seq": wordcount_seq,
    "manager-get": manager_get,
    "manager-insert": manager_insert,
}


def one_line(e):
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def main():
    job, workers, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    stdin, stdout = sys.stdin.buffer, sys.stdout
    try:
        exec(INSTALL, {})
        t = sys.modules[MODULE]
        pool = multiprocessing.Pool(workers, initializer=exec, initargs=(INSTALL, {}))
    except Exception as e:
        print("error", one_line(e), flush=True)
        return
    with pool:
        try:
            rep = JOBS[job](pool, t, args, stdin)
            # Every worker up and past its initializer before the first timing.
            pool.map(t.double, range(4 * workers), 1)
        except Exception as e:
            print("error", one_line(e), flush=True)
            return
        print("ready", multiprocessing.get_start_method(), flush=True)
        for _ in iter(stdin.readline, b""):
            try:
                answer = f"ok {rep()}"
            except Exception as e:
                answer = f"error {one_line(e)}"
            stdout.write(answer + "\n")
            stdout.flush()


main()
