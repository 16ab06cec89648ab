"""cffi (API mode, out-of-line) builders for pygev's two small native modules.

The C lives in real files beside the package each module serves; this file only builds them:

* ``ringbuf._ringbuf_native`` from ``ringbuf/_ring.c`` (declarations in ``ringbuf/_ring.h``):
  mirrored memfd mappings and readv/writev between a file descriptor and ring memory.
* ``reactor._reactor_native`` from ``reactor/_reactor.c`` (declarations in
  ``reactor/_reactor.h``): the per-turn I/O glue (poll + read into the arena + frame splitting,
  flush of every connection's output), and ``reactor/_uring.c`` (``reactor/_uring.h``): the
  same poll and flush over io_uring (direct syscalls, no liburing).

Each header is both the cdef cffi parses and the header the C source includes, so a struct or a
constant is written once.  Build: ``pip install -e .`` runs this through setup.py's
``cffi_modules``; ``python build_ffi.py [ring|reactor]`` builds in place for development.
"""
import os
import sys

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(*parts: str) -> str:
    """A path below this directory, relative to the working directory (what setuptools wants)."""
    return os.path.relpath(os.path.join(_HERE, *parts))


def _builder(module: str, package: str, headers: list[str], sources: list[str]) -> FFI:
    ffi = FFI()
    for header in headers:
        with open(os.path.join(_HERE, package, header)) as f:
            ffi.cdef(f.read())
    includes = "".join(f'#include "{header}"\n' for header in headers)
    ffi.set_source(module, f'#include <stdint.h>\n#include <stddef.h>\n{includes}',
                   sources=[_rel(package, source) for source in sources], include_dirs=[_rel(package)],
                   depends=[_rel(package, header) for header in headers], extra_compile_args=["-O2"],
                   py_limited_api=True)
    return ffi


ring_ffi = _builder("ringbuf._ringbuf_native", "ringbuf", ["_ring.h"], ["_ring.c"])
# _uring.h (the io_uring backend, _uring.c) is read after _reactor.h: it uses pg_loop
reactor_ffi = _builder("reactor._reactor_native", "reactor", ["_reactor.h", "_uring.h"],
                       ["_reactor.c", "_uring.c"])

if __name__ == "__main__":
    wanted = set(sys.argv[1:]) or {"ring", "reactor"}
    os.chdir(_HERE)
    if "ring" in wanted:
        ring_ffi.compile(verbose=False)
    if "reactor" in wanted:
        reactor_ffi.compile(verbose=False)
