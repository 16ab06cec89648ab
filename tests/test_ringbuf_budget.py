"""The process-wide budget of mirrored mappings (each costs two vm.max_map_count entries).

Past the budget, or when a mapping fails, a ring falls back to portable bytearray memory and
still keeps every promise of the API; a mapping gives its slot back once it is unmapped.  Each
scenario runs in a fresh interpreter (mirrored mode forced), so the process-wide count starts
at zero and no other test's rings are in it.
"""
from __future__ import annotations

from support import run_python

PRELUDE = r"""
import gc, os, socket
import ringbuf
from ringbuf import RingBuffer, mirrored_count, set_mirror_budget

def exercise(rb):
    # write / peek across the wrap, read_from and write_to: all work in either mode
    cap = rb.capacity
    rb.write(b"a" * (cap - 10))
    rb.retrieve(cap - 20)
    rb.write(b"b" * 30)                  # 40 bytes straddling the end of the memory
    assert rb.capacity == cap and bytes(rb.peek_all()) == b"a" * 10 + b"b" * 30
    assert bytes(rb.virtual_read(15)) == b"a" * 10 + b"b" * 5
    rb.virtual_revert()
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        assert rb.write_to(a.fileno()) == 40 and rb.is_empty
        got = b""
        while len(got) < 40:
            got += b.recv(64)
        assert got == b"a" * 10 + b"b" * 30
        b.sendall(b"xyz" * 10)
        assert rb.read_from(a.fileno()) == 30
        assert bytes(rb.peek_all()) == b"xyz" * 10
    rb.write(b"q" * (3 * cap))           # growth keeps the data
    assert bytes(rb.peek_all()) == b"xyz" * 10 + b"q" * (3 * cap)
    rb.reset()
    assert rb.capacity == cap and rb.is_empty
"""

SMALL_BUDGET = PRELUDE + r"""
assert mirrored_count() == 0
set_mirror_budget(3)
assert ringbuf.mirror_budget() == 3
rings = [RingBuffer(4096) for _ in range(5)]
assert [rb.mirrored for rb in rings] == [True, True, True, False, False], [rb.mirrored for rb in rings]
assert mirrored_count() == 3
for rb in rings:
    exercise(rb)
assert mirrored_count() == 3           # growth fell back to portable (budget full) and reset freed it

# Freeing a mirrored ring gives its slot back; the next ring is mirrored again.
del rings[0]
gc.collect()
assert mirrored_count() == 2
again = RingBuffer(4096)
assert again.mirrored and mirrored_count() == 3
exercise(again)

# A live view keeps its mapping, and so its slot, until the view is gone too.
view = rings[0].peek_all()
del rings[0]
gc.collect()
assert mirrored_count() == 3
del view
gc.collect()
assert mirrored_count() == 2

# Growing a mirrored ring while the budget has room maps the bigger memory mirrored; the old
# mapping is given back as soon as nothing refers to it.
grown = rings[0]
assert grown.mirrored
grown.write(b"g" * (5 * grown.capacity))
assert grown.mirrored and mirrored_count() == 2
grown.reset()
assert grown.mirrored and mirrored_count() == 2

# A budget of 0 makes every new allocation portable; rings already mirrored keep their memory.
set_mirror_budget(0)
assert not RingBuffer(4096).mirrored and mirrored_count() == 2
set_mirror_budget(None)
assert ringbuf.mirror_budget() > 3 and RingBuffer(4096).mirrored
del rings, again, grown
gc.collect()
assert mirrored_count() == 0, mirrored_count()
print("ok")
"""


def test_rings_past_the_budget_are_portable_and_work() -> None:
    assert "ok" in run_python(SMALL_BUDGET, {"RINGBUF_PORTABLE": "0", "RINGBUF_MAX_MIRRORED": ""})


ENV_BUDGET = PRELUDE + r"""
assert ringbuf.mirror_budget() == 2
rings = [RingBuffer(1) for _ in range(3)]
assert [rb.mirrored for rb in rings] == [True, True, False]
print("ok")
"""


def test_budget_from_the_environment() -> None:
    assert "ok" in run_python(ENV_BUDGET, {"RINGBUF_PORTABLE": "0", "RINGBUF_MAX_MIRRORED": "2"})


DEFAULT_BUDGET = r"""
import ringbuf
try:
    with open("/proc/sys/vm/max_map_count") as f:
        maps = int(f.read())
except OSError:
    maps = 65530
assert ringbuf.mirror_budget() == maps // 8, (ringbuf.mirror_budget(), maps)
print("ok")
"""


def test_default_budget_is_a_quarter_of_the_map_count() -> None:
    assert "ok" in run_python(DEFAULT_BUDGET, {"RINGBUF_MAX_MIRRORED": ""})


BAD_ENV = r"""
try:
    import ringbuf
except ValueError as exc:
    assert "RINGBUF_MAX_MIRRORED" in str(exc), exc
    print("refused")
"""


def test_bad_budget_in_the_environment_is_refused() -> None:
    for value in ("lots", "-1"):
        assert "refused" in run_python(BAD_ENV, {"RINGBUF_MAX_MIRRORED": value})


BAD_ARGUMENT = r"""
import ringbuf
for bad, exc in ((-1, ValueError), ("3", TypeError), (2.5, TypeError)):
    try:
        ringbuf.set_mirror_budget(bad)
    except exc as e:
        assert "budget" in str(e), e
    else:
        raise AssertionError(f"set_mirror_budget({bad!r}) accepted")
ringbuf.set_mirror_budget(10 ** 30)      # "unlimited"
assert ringbuf.RingBuffer(1).mirrored
print("ok")
"""


def test_set_mirror_budget_checks_its_argument() -> None:
    assert "ok" in run_python(BAD_ARGUMENT, {"RINGBUF_PORTABLE": "0"})


# With the address space capped, the 2*64 MiB mirrored reservation cannot be made but the
# 64 MiB bytearray can: the ring falls back instead of failing, and the failed attempt does not
# keep a budget slot.
MAPPING_FAILS = PRELUDE + r"""
import resource
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
size = 64 << 20
limit = vm + size + (48 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rb = RingBuffer(size)
assert not rb.mirrored and rb.capacity == size
assert mirrored_count() == 0
rb.write(b"z" * 100)
assert bytes(rb.peek_all()) == b"z" * 100
del rb
gc.collect()
small = RingBuffer(4096)                 # small mappings still work
assert small.mirrored and mirrored_count() == 1
exercise(small)
print("ok")
"""


def test_failed_mapping_falls_back_to_portable() -> None:
    assert "ok" in run_python(MAPPING_FAILS, {"RINGBUF_PORTABLE": "0", "RINGBUF_MAX_MIRRORED": ""})
