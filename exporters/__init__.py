"""edgespool.exporters"""
