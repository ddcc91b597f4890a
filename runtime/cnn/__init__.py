"""edgespool.runtime.cnn"""
