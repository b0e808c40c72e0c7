"""Prefect flows and deployments: orchestration only, no ML code."""
