"""`python -m edge_pneumo ...` is the `edge-pneumo` command."""

from .entry import main

main()
