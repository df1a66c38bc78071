"""veriml benchmarks: each ``bench_*.py`` compares veriml with its baseline in the same run."""
