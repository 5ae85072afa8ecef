"""Builds the native extension imgsim_fast._core from csrc/.

One build serves every x86-64 CPU: each SIMD kernel file selects its target with function attributes
(see csrc/hamming_*.cpp), and the dispatcher picks one at import from CPUID/XGETBV. So the flags here
carry no -march=native and no -ffast-math (integer results must be bit-exact on every CPU).
"""
import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
extra = ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra"]
if sys.platform.startswith("linux"):
    extra.append("-pthread")

ext = Pybind11Extension(
    "imgsim_fast._core",
    sources,
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=extra,
    extra_link_args=["-pthread"] if sys.platform.startswith("linux") else [],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
