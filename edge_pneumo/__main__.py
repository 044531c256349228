"""`python -m edge_pneumo ...` is the `edge-pneumo` command."""

from edge_pneumo.apps.entry import main

main()
