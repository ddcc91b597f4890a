"""edgespool.runtime.bundle"""
