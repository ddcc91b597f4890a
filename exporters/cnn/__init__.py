"""edgespool.exporters.cnn"""
