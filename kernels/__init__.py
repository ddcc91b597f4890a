"""edgespool.kernels"""
