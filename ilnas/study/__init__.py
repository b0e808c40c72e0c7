"""Studies: arms x search seeds of search -> derive -> retrain trials, compared over seeds in one report.

``spec`` (the YAML schema), ``trials`` (grid and keys), ``sampling`` (random cells), ``trial`` (one trial,
run on a worker), ``stats`` (Welch's t), ``report`` (markdown + figures), ``tracking`` (MLflow). The
orchestration (Prefect on Dask) is ``flows/study.py``; nothing here imports Prefect or Dask.
"""
