"""Prefect flows and deployments: orchestration only, no ML code."""

from ilnas.tracking import telemetry_off

# every `python -m flows...` entry point imports this package first: telemetry is off (unless the user set
# the variables) before prefect, mlflow or dvc is imported, since they read these settings once
telemetry_off()
