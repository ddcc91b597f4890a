"""edgespool.runtime.decoder"""
