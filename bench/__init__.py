"""Benchmarks, fuzzers, the network-fault harness and the GPU checks of adaptcast (`pip install ./bench`)."""
