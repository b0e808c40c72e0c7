"""`python -m ilnas`."""
from ilnas.cli import app

app(prog_name="ilnas")
