"""edgespool.schedulers"""
