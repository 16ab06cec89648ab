"""Build hook: setuptools needs `cffi_modules` here to compile the two native modules from build_ffi.py.

build_ffi.py builds them against the stable ABI (py_limited_api=True: `*.abi3.so`), so the wheel is
tagged cp310-abi3 (requires-python >= 3.10): one wheel per platform serves every CPython >= 3.10.
"""
from setuptools import setup

setup(
    cffi_modules=["build_ffi.py:ring_ffi", "build_ffi.py:reactor_ffi"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
