"""Cluster runs (issue 19): the MPI worker program and the emulated boards (network namespaces) it runs on."""
