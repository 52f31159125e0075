"""python -m deploytool: the same as the deploytool command."""

from .cli import main

main()
