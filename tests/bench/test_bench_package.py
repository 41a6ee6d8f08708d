"""polycnn.bench as a package: ``python -m polycnn.bench`` (what the child processes of
``polycnn bench`` and benchmarks/gpu_check.sh run), the device and precision options on the
CPU, the PyTorch twins of the training models, and gpu_check.sh itself (checked without a GPU:
its syntax, and a dry run on cupy-emu and PyTorch's CPU). Never asserts on a time."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import polycnn as pc
from polycnn import bench as B
from polycnn.bench import training
from polycnn.bench.__main__ import main as bench_main
from polycnn.bench.__main__ import parser

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--quick", "--rounds", "1", "--layers", "a", "--matmul-size", "64", "--no-startup"]


def _torch():
    torch = B._import_torch()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    return torch


def _emulator():
    status = pc.available_backends().get("cupy-emu")
    if status is not True:
        pytest.skip(f"cupy-emu is not available here: {status}")


def test_no_bench_module_imports_or_runs_the_cli():
    for path in sorted((ROOT / "src" / "polycnn" / "bench").glob("*.py")):
        text = path.read_text()
        assert "polycnn.cli" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                assert "cli" not in (node.module or "").split("."), (path.name, node.module)


def test_module_entry_prints_the_report_and_json(capsys):
    assert bench_main(["--backends", "numpy", "--no-torch", "--no-training", *TINY]) == 0
    table = capsys.readouterr().out
    assert "conv and max pool, float32" in table and "numpy" in table
    assert bench_main(["--backends", "numpy", "--no-torch", "--no-training", *TINY, "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(r["layer"], r["pass"], r["engine"]) for r in data["ops"]} == {
        ("a", "fwd", "numpy"), ("a", "fwd+bwd", "numpy")}
    assert "device" not in data["config"]  # a CPU run's record is as it always was


@pytest.mark.parametrize("args, words", [
    (["--device", "tpu"], ["--device", "'tpu'"]),
    (["--precision", "fp8"], ["--precision", "'fp8'", "tf32"]),
    (["--models", "alexnet"], ["--models", "'alexnet'", "lenet5", "shapes"]),
    (["--backends", "nosuch"], ["--backends", "'nosuch'"]),
])
def test_module_entry_refuses_bad_options_in_one_line(capsys, args, words):
    assert bench_main(args + TINY) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("Error: ") and "\n" not in message
    for word in words:
        assert word in message


def test_child_argv_is_what_the_module_entry_parses():
    params = dict(backends="numpy,numba", layers="a,b", rounds=3, matmul_size=256, threads=1,
                  ops=False, training=True, startup=False, no_torch=True, quick=True,
                  device="cuda", precision="tf32", models="shapes", train_batch=128,
                  train_steps=20, graph=True, check=True)
    args = vars(parser().parse_args(B.child_argv(params)))
    assert args["backends"] == ["numpy", "numba"] and args["layers"] == ["a", "b"]
    assert args["models"] == ["shapes"]
    for key in ("rounds", "matmul_size", "threads", "ops", "training", "startup", "no_torch",
                "quick", "device", "precision", "train_batch", "train_steps", "graph", "check"):
        assert args[key] == params[key], key
    # absent options keep the module's defaults
    defaults = vars(parser().parse_args(B.child_argv({})))
    assert defaults["ops"] and defaults["training"] and defaults["startup"] is None
    assert defaults["device"] == "cpu" and defaults["precision"] == "float32"


def test_config_from_options_matches_quick_defaults():
    config = B.config_from_options(backends=["numpy"], quick=True, rounds=2, device="cpu",
                                   precision="tf32", models=["lenet5"], train_batch=16)
    assert config.rounds == 2 and config.batch_divisor == 8 and config.precision == "tf32"
    assert config.models == ["lenet5"] and config.train_batch == 16 and not config.startup
    assert B.config_from_options(torch_only=True).backends == []


@pytest.mark.parametrize("name", list(B.TRAIN_MODELS))
def test_torch_twin_has_the_polycnn_models_layers(name):
    torch = _torch()
    model = B.TRAIN_MODELS[name]
    net = B.polycnn_model(model, "numpy")
    twin = B.torch_twin(torch, net)
    assert [tuple(p.shape) for p in twin.parameters()] == [
        tuple(p.data.shape) for p in net.parameters()]
    x = np.random.default_rng(0).random((2, *model.input_shape), dtype=np.float32)
    net.eval()
    twin.eval()
    assert tuple(twin(torch.from_numpy(x)).shape) == tuple(net(x).shape) == (2, model.classes)


def test_lenet5_is_the_models_preset():
    net = B.polycnn_model(B.TRAIN_MODELS["lenet5"], "numpy")
    preset = pc.models.lenet5((1, 28, 28), 10, backend="numpy", seed=0)
    assert net.spec() == preset.spec()
    for a, b in zip(net.parameters(), preset.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_a_twin_refuses_a_layer_it_cannot_build():
    torch = _torch()
    with pytest.raises(ValueError, match="no PyTorch twin for a Mystery layer"):
        training._torch_layer(torch.nn, "Mystery", {})


def test_device_options_on_the_cpu_with_the_emulator():
    """What gpu_check.sh asks of a GPU (a CUDA backend in tf32, the training step as a captured
    graph), on cupy-emu against PyTorch's CPU."""
    _torch()
    _emulator()
    data = B.run(B.config_from_options(
        backends=["cupy-emu"], layers=["a"], rounds=1, quick=True, matmul_size=64,
        device="cpu", precision="tf32", models=["shapes"], train_batch=16, train_steps=1,
        graph=True, check=True))
    assert data["config"]["precision"] == "tf32" and data["config"]["graph"] is True
    errors = {(r["engine"], r["pass"]): r.get("rel_err_vs_torch") for r in data["ops"]}
    assert errors[("cupy-emu", "fwd+bwd")] is None and errors[("torch", "fwd")] is None
    assert 0.0 < errors[("cupy-emu", "fwd")] < 1e-2  # TF32 rounds x and w: not exact, close
    assert {r["engine"] for r in data["ops"]} == {"cupy-emu", "torch"}
    assert [r["engine"] for r in data["training"]] == ["cupy-emu", "cupy-emu+graph", "torch"]
    assert all(r["model"] == "shapes" and r["batch"] == 2 for r in data["training"])
    table = B.render(data)
    assert "conv and max pool, tf32" in table and "PyTorch on cpu" in table
    assert "cupy-emu+graph" in table and "rel err" in table


def test_graph_is_only_for_backends_that_capture():
    data = B.run(B.config_from_options(
        backends=["numpy"], ops=False, no_torch=True, quick=True, rounds=1, models=["lenet5"],
        train_steps=1, graph=True))
    assert [r["engine"] for r in data["training"]] == ["numpy"]


def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_reports_every_table():
    """GPU_CHECK_DRY=1: the script's Python entries with its flags, on cupy-emu and the CPU."""
    _torch()
    _emulator()
    env = dict(os.environ, GPU_CHECK_DRY="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "cupy-emu" in out and "yes" in out  # polycnn backends
    assert out.count("benchmark exit status: 0") == 2
    for title in ("conv and max pool, float32", "conv and max pool, tf32", "rel err",
                  "training throughput", "cupy-emu+graph", "done: overall status 0"):
        assert title in out, title
