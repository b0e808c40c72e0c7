"""DVC stage entry points: read params.yaml, call the ilnas library, write outs, log to MLflow."""

from ilnas.tracking import telemetry_off

# every `python -m stages.<name>` imports this package first: telemetry off before mlflow or torch is imported
telemetry_off()
