"""edgespool.apps"""
