"""``python -m ilnas.train retrain|transfer ...`` (also usable as ``torchrun -m ilnas.train retrain ...``)."""

from ilnas.cli import app

app(prog_name="ilnas")
