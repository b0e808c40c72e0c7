"""``python -m ilnas.cli`` (the same as ``python -m ilnas``)."""

from ilnas.cli import main

main()
