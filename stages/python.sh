#!/bin/sh
# The project's Python for DVC stage commands (dvc.yaml: `sh stages/python.sh -m stages.<name>`), so that
# `.venv/bin/dvc repro` / `dvc exp run` work without an activated venv. First match wins:
#   $ILNAS_PYTHON; the .venv of the repo DVC runs for ($DVC_ROOT: also set under `dvc exp run --temp/--queue`,
#   whose copies live in .dvc/tmp/exps/); the .venv beside this script; python3 / python on PATH.
for candidate in "$ILNAS_PYTHON" "${DVC_ROOT:+$DVC_ROOT/.venv/bin/python}" \
                 "$(dirname "$0")/../.venv/bin/python"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then exec "$candidate" "$@"; fi
done
if command -v python3 >/dev/null 2>&1; then exec python3 "$@"; fi
exec python "$@"
