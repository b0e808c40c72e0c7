"""DVC stage entry points: read params.yaml, call the ilnas library, write outs, log to MLflow."""
