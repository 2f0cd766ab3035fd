"""`python -m crux.cli`: the same as the `crux` console script."""

from crux.cli import main

main()
