"""edgespool.offload"""
