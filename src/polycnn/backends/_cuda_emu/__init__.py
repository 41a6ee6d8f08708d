"""cupy-emu: run polycnn's CUDA kernels on the CPU, for testing and kernel debugging.

- :mod:`.build` compiles a ``.cu`` with g++ and the header ``cuda_emu.h`` into a shared library,
  cached by a hash of its inputs in a user cache folder;
- :mod:`.runtime` loads it and launches kernels, checking every argument against the parameter
  types the compiler saw;
- :mod:`.standin` is a stand-in for the part of CuPy the ``cupy`` backend uses, so the very same
  backend module runs on it.

Slow (every CUDA thread is a fiber on the CPU) and for testing only; see DESIGN.md, "Testing the
CUDA kernels without a GPU".
"""
