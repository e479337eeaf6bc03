"""The process's memory after a burst (gateway.ops.memory), on the real C library: glibc's arenas limited in the
process and its children, the heap trimmed once the RSS has grown, and the allocation sites on a signal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from gateway.ops.logs import LOG_KEYS
from gateway.ops.memory import MIB, limit_malloc_arenas

# Eight threads each take a block of the C heap (below glibc's mmap threshold) and hold it while the others
# start: each thread's first allocation gets an arena of its own until the limit. malloc_stats() then writes
# one "Arena N:" paragraph per arena to standard error.
ARENAS_SCRIPT = textwrap.dedent("""
    import ctypes, sys, threading
    if sys.argv[1] == "limit":
        from gateway.ops.memory import limit_malloc_arenas
        limit_malloc_arenas({})
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    barrier = threading.Barrier(8)
    def hold():
        block = libc.malloc(100_000)
        barrier.wait()
        libc.free(ctypes.c_void_p(block))
    threads = [threading.Thread(target=hold) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc.malloc_stats()
""")


def _arenas(mode: str, env: dict[str, str]) -> int:
    result = subprocess.run([sys.executable, "-c", ARENAS_SCRIPT, mode], capture_output=True, text=True,
                            timeout=60, check=True, env=env)
    return sum(1 for line in result.stderr.splitlines() if line.startswith("Arena "))


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}


def test_the_arena_limit_holds_in_the_process_and_in_its_children():
    assert _arenas("free", _clean_env()) > 2, "without the limit, each thread gets an arena of its own"
    assert _arenas("limit", _clean_env()) <= 2
    children = _clean_env()
    assert limit_malloc_arenas(children) == 2 and children["MALLOC_ARENA_MAX"] == "2"
    assert _arenas("free", children) <= 2, "a process started with the node's environment inherits the limit"


def test_an_operators_arena_limit_is_kept():
    environ = {"MALLOC_ARENA_MAX": "4"}
    assert limit_malloc_arenas(environ) == 4 and environ["MALLOC_ARENA_MAX"] == "4"


# In a fresh process: in the suite's own process, earlier tests' freed heap absorbs the burst (the RSS does not
# grow by the slack) and the check rightly does not trim.
TRIMMER_SCRIPT = textwrap.dedent("""
    import json
    from structlog.testing import capture_logs
    from gateway.ops.memory import MIB, HeapTrimmer, rss_bytes
    trimmer = HeapTrimmer(slack_bytes=16 * MIB)
    quiet = trimmer.check()
    buffers = [bytearray(b"x" * 60_000) for _ in range(1000)]  # 60 MB of heap, below glibc's mmap threshold
    survivors = buffers[::50]  # a few blocks still in use, so that glibc cannot simply shrink the heap's top
    del buffers
    held = rss_bytes()
    with capture_logs() as logs:
        trimmed = trimmer.check()
    after = rss_bytes()
    again = trimmer.check()
    print(json.dumps({"quiet": quiet, "trimmed": trimmed, "held": held, "after": after, "again": again,
                      "logs": [{k: v for k, v in e.items()} for e in logs]}))
""")


def test_the_trimmer_gives_a_bursts_freed_heap_back_and_leaves_a_quiet_process_alone():
    run = subprocess.run([sys.executable, "-c", TRIMMER_SCRIPT], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert not result["quiet"], "nothing grew: no trim"
    assert result["trimmed"]
    assert result["after"] < result["held"] - 30 * MIB
    (event,) = result["logs"]
    assert event["event"] == "heap_trimmed" and event["bytes"] > 30 * MIB
    assert set(event) - {"log_level"} <= LOG_KEYS
    assert not result["again"], "the level follows the RSS after the trim"


def test_the_allocation_sites_are_written_on_sigusr1_once_asked(tmp_path):
    script = textwrap.dedent("""
        import os, signal, threading, time
        from gateway.ops.memory import trace_allocations_if_asked
        assert trace_allocations_if_asked()
        def signal_and_wait():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.2)  # let the handler start its thread
            for thread in threading.enumerate():
                if thread.name == "tracemalloc-dump":
                    thread.join(30)
        signal_and_wait()
        kept = [bytes(1000) + bytes([i % 256]) for i in range(20_000)]  # 20 MB held on this line
        signal_and_wait()
        signal_and_wait()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SPINE_GATEWAY_TRACEMALLOC": "1"}, check=True)
    err = result.stderr
    assert "tracing started (1 frames)" in err
    largest = err.split("largest sites:")[1].splitlines()[1]
    assert "<string>:12" in largest and int(largest.split()[0]) > 19_000, largest  # KiB, on the line that holds
    assert err.count("grown since the previous dump:") == 1


def test_no_tracing_without_the_switch():
    script = "from gateway.ops.memory import trace_allocations_if_asked; print(trace_allocations_if_asked())"
    env = {key: value for key, value in os.environ.items() if key != "SPINE_GATEWAY_TRACEMALLOC"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                            check=True)
    assert result.stdout.strip() == "False"


def test_a_fuzzed_uids_warnings_leave_nothing_behind():
    """pydicom warns about each invalid UID with the value in the text; Python's registry keeps every text once
    shown. Checked in a fresh process, with the filter and without (the registry grows: the test can fail)."""
    script = textwrap.dedent("""
        import sys, warnings
        import pydicom.valuerep
        from pydicom import config
        from pydicom.valuerep import validate_value
        if sys.argv[1] == "quiet":
            from gateway.ops.memory import quiet_value_warnings
            quiet_value_warnings()
        for n in range(500):
            validate_value("UI", f"1.2.84{n}x.10008", config.WARN)
        print(len(getattr(pydicom.valuerep, "__warningregistry__", {})))
    """)
    counts = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                       timeout=60, check=True).stdout) for mode in ("loud", "quiet")}
    assert counts["loud"] >= 500 and counts["quiet"] <= 1
