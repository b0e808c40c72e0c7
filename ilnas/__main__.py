"""`python -m ilnas`."""
from ilnas.cli import main

main()
