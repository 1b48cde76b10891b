"""CUDA source executed on the CPU, for the tests: ``cuda_emu.h`` (the CUDA surface on OS threads),
``launcher.h`` (the C entry points), ``build`` (g++ build, cached, loaded with ctypes) and
``fake_cupy`` (the stand-in through which backend_cupy's own launch code reaches the emulator)."""
