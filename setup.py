"""Build hook: setuptools needs `cffi_modules` here to compile the two native modules from build_ffi.py."""
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ring_ffi", "build_ffi.py:reactor_ffi"])
