"""Toolchains: C++ compilers, TVM runtime libraries, CUDA, Java and emulation."""
