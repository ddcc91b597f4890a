"""edgespool.runtime"""
