"""Fault tests, bad input on every entry point: one message block (what, which key or file, what is allowed),
exit code 2, no traceback, before any compute; ``--debug`` / ``ILNAS_DEBUG=1`` shows the traceback.

Real processes (``python -m ilnas``, ``python -m stages.*``, ``python -m ilnas.params``, ``python -m flows``)
on real files: directories, non-UTF-8 bytes, empty files, damaged torch files, bad genotypes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ilnas.errors import EXIT_INPUT, InputError, exit_code_of, format_error, guarded

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("ILNAS_DEBUG", None)


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env or ENV,
                          timeout=300)
    return proc, time.perf_counter() - started


def assert_one_block(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr
    assert proc.returncode == EXIT_INPUT, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "╭" not in err, err[-3000:]  # no Python or rich traceback
    assert err.count(": error: ") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_cli_bad_override_one_block_did_you_mean(tmp_path: Path) -> None:
    proc, elapsed = run("-m", "ilnas", "search", "-S", "search.hypergad=exact", cwd=tmp_path)
    assert_one_block(proc, "search.hypergad", "did you mean 'hypergrad'?", "allowed keys in search")
    assert not (tmp_path / "models").exists()  # nothing was computed or written
    assert elapsed < 30, elapsed  # no compute: interpreter start and imports only (2 shared cores here)


def test_cli_config_file_faults(tmp_path: Path) -> None:
    proc, _ = run("-m", "ilnas", "retrain", "-c", str(tmp_path), cwd=tmp_path)
    assert_one_block(proc, f"{tmp_path}: is a directory")
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"seed: 0\n\xff\xfe\x00 garbage\n")
    proc, _ = run("-m", "ilnas", "transfer", "-c", str(binary), "-d", str(tmp_path), cwd=tmp_path)
    assert_one_block(proc, "not a UTF-8 text file")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc, _ = run("-m", "ilnas", "search", "--debug", "-S", "search.cells=1", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "search.cells" in proc.stderr
    proc, _ = run("-m", "ilnas.params", "check", "-S", "search.cells=1", cwd=REPO,
                  env={**ENV, "ILNAS_DEBUG": "1"})
    assert "Traceback" in proc.stderr


def test_empty_params_refused_by_check_and_by_stages(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_bytes(b"# nothing but a comment\n")
    proc, _ = run("-m", "ilnas.params", "check", str(params), cwd=tmp_path)
    assert_one_block(proc, "is empty")
    proc, _ = run("-m", "stages.search", "--params", str(params), cwd=tmp_path)
    assert_one_block(proc, "is empty")


def test_flow_refuses_bad_input_before_prefect_starts(tmp_path: Path) -> None:
    """issue 13 item 4: a typo fails before any server starts (no Prefect database is ever created)."""
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, project / name)
    before = (project / "params.yaml").read_bytes()
    home = tmp_path / "prefect-home"
    env = {**ENV, "PREFECT_HOME": str(home)}
    for bad in (["-S", "search.hypergad=exact"], ["-S", "retrain.opt=sgdd"], ["-S", "search.partial_channels=3"]):
        proc, elapsed = run("-m", "flows", "--project-dir", str(project), *bad, cwd=tmp_path, env=env)
        assert proc.returncode == EXIT_INPUT and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert bad[1].split("=")[0] in proc.stderr, proc.stderr
        assert elapsed < 60, elapsed
    assert not list(home.rglob("*.db")) and (project / "params.yaml").read_bytes() == before


def test_stage_damaged_inputs_one_block(tmp_path: Path) -> None:
    from faults_util import flip_tensor_byte

    from ilnas.search.checkpoint import save_checkpoint

    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ndevice: cpu\ntracking: {enabled: false}\nderive: {source: search}\n")
    alphas = tmp_path / "models" / "search" / "alphas.pt"
    save_checkpoint(alphas, {"alphas_normal": torch.randn(14, 8), "alphas_reduce": torch.randn(14, 8)})
    flip_tensor_byte(alphas)
    proc, _ = run("-m", "stages.derive", "--params", str(params), cwd=tmp_path)
    assert_one_block(proc, "models/search/alphas.pt", "CRC-32")
    assert not (tmp_path / "models" / "genotype.json").exists()


def test_bad_genotype_file_one_block(tmp_path: Path) -> None:
    genotype = tmp_path / "genotype.json"
    genotype.write_text('{"normal": [["sep_conv_9x9", 0]]}')
    proc, _ = run("-m", "ilnas", "retrain", "-g", str(genotype), "-S", "retrain.epochs=1", "-S", "device=cpu",
                  "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_block(proc, str(genotype))


def test_guarded_keeps_tracebacks_of_unexpected_errors(capsys) -> None:
    with pytest.raises(KeyError):
        guarded(lambda: {}["missing"], "prog")
    with pytest.raises(SystemExit) as info:
        guarded(lambda: (_ for _ in ()).throw(InputError("x.y: bad; allowed: 1, 2")), "prog")
    assert info.value.code == 2 and capsys.readouterr().err.startswith("prog: error: x.y: bad; allowed: 1, 2")
    assert exit_code_of(FloatingPointError("non-finite loss")) == 1 and exit_code_of(KeyError("k")) is None
    assert format_error("p", InputError("a\nb")).splitlines()[1] == "  b"
