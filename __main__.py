"""`python -m edgespool ...` is the `edgespool` CLI."""
from .apps.cli import main

main()
