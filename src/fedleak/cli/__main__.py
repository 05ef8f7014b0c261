"""``python -m fedleak.cli``: the ``fedleak`` command."""

from fedleak.cli import main

main()
