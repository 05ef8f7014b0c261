"""``python -m fedleak``: the command line, where the ``fedleak`` script is not installed (a
``--target`` install on a device machine, a plain ``PYTHONPATH=src``)."""

from fedleak.cli import main

main()
