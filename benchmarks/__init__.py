"""edgespool.benchmarks"""
