"""``polycnn bench`` and polycnn.bench on tiny configurations: the tables, the --json shape, the
selection rules and errors. Never asserts on a time (a shared machine makes timings noise)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import polycnn as pc
from polycnn import bench as B
from polycnn.bench import core, machine, timing
from polycnn.bench.report import render
from polycnn.cli.main import main

TINY = ["bench", "--quick", "--rounds", "1", "--no-training", "--no-startup",
        "--matmul-size", "256"]


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def _torch_installed() -> bool:
    return B._import_torch() is not None


def test_json_has_one_row_per_layer_pass_and_engine():
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "a,pool", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # progress goes to stderr, stdout is the one object
    engines = ["numpy"] + (["torch"] if _torch_installed() else [])
    assert data["engines"] == engines
    got = [(r["layer"], r["pass"], r["engine"]) for r in data["ops"]]
    assert got == [(layer, p, e) for layer in ("a", "pool") for p in B.PASSES for e in engines]
    for row in data["ops"]:
        assert row["ms"] > 0 and row["rounds"] == 1 and row["calls_per_round"] >= 1
        if row["layer"] == "pool":
            assert row["gflops"] is None and row["peak_fraction"] is None
        else:
            assert row["gflops"] > 0 and row["peak_fraction"] > 0
        if "torch" in engines:
            assert row["time_vs_torch"] > 0
    assert data["matmul"]["n"] == 256 and data["matmul"]["gflops"] > 0
    env = data["environment"]
    assert env["numpy"] and env["threads"] >= 1 and env["cpu"]
    assert set(env["blas_env"]) == {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    assert data["training"] == [] and data["startup"] == []
    assert data["config"]["batch_divisor"] == 8


def test_quick_shrinks_the_batch_but_keeps_the_layer():
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "c", "--no-torch", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["ops"]
    assert {r["shape"] for r in rows} == {"N4 C64 56x56 K64 3x3 pad 1"}
    flops = 2 * 4 * 64 * 56 * 56 * 64 * 9
    fwd, both = rows
    # GFLOP/s is the FLOP count over the time: fwd+bwd counts three times the forward's FLOPs
    assert fwd["gflops"] == pytest.approx(flops / (fwd["ms"] * 1e-3) / 1e9)
    assert both["gflops"] == pytest.approx(3 * flops / (both["ms"] * 1e-3) / 1e9)


def test_table_lists_every_engine_and_the_environment():
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "e")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("CPU:", "threads:", "BLAS:", "matmul peak: numpy.matmul 256^3 float32",
                 "layer", "GFLOP/s", "% peak", "N8 C32 32x32 K64 3x3 pad 1 stride 2"):
        assert text in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("layer"))
    body = lines[lines.index(header) + 2:]
    column = header.index("engine")
    engines = [line[column:].split()[0] for line in body
               if line.strip() and not line.startswith("note")]
    if _torch_installed():
        assert "time/torch" in header
        assert engines == ["numpy", "torch", "numpy", "torch"]
    else:
        assert engines == ["numpy", "numpy"]
    assert "bench: layer e fwd" in result.stderr


def test_no_torch_drops_the_torch_column():
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "a", "--no-torch")
    assert result.exit_code == 0, result.output
    assert "time/torch" not in result.stdout and "torch  " not in result.stdout


def test_missing_torch_is_a_note_not_an_error(monkeypatch):
    monkeypatch.setattr(core, "_import_torch", lambda: None)
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "a")
    assert result.exit_code == 0, result.output
    assert "note: PyTorch is not installed: pip install torch" in result.stdout
    assert "time/torch" not in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--backends", "numpy,nosuch"], ["--backends", "'nosuch'", "known backends", "numpy"]),
    (["--layers", "a,zz"], ["--layers", "'zz'", "known layers", "pool"]),
    (["--layers", " , "], ["--layers", "comma-separated"]),
])
def test_bad_names_are_one_line_errors(args, words):
    result = _invoke("bench", *args)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message


def test_repeat_needs_isolate():
    result = _invoke("bench", "--repeat", "3")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "--repeat" in message and "--isolate" in message and "\n" not in message


def test_rounds_must_be_positive():
    result = _invoke("bench", "--rounds", "0")
    assert result.exit_code == 2 and "--rounds" in result.output


def test_emulator_runs_only_when_named(monkeypatch):
    status = {"numpy": True, "cupy-emu": True, "cupy": "no CUDA device"}
    monkeypatch.setattr(core, "available_backends", lambda: status)
    chosen, notes = B.select_backends(None)
    assert chosen == ["numpy"]
    assert any(n.startswith("cupy-emu not run") for n in notes)
    assert any(n.startswith("cupy skipped: no CUDA device") for n in notes)
    chosen, notes = B.select_backends(["cupy-emu", "numpy", "cupy-emu", "cupy"])
    assert chosen == ["cupy-emu", "numpy"]
    assert notes == ["cupy skipped: no CUDA device"]


def test_nothing_to_run_is_an_error(monkeypatch):
    monkeypatch.setattr(core, "available_backends", lambda: {"numpy": True, "cupy": "no GPU here"})
    result = _invoke(*TINY, "--backends", "cupy")
    assert result.exit_code == 2
    assert "no backend to benchmark" in result.stderr and "no GPU here" in result.stderr


def _fake_clock(monkeypatch, durations: dict):
    """Engines whose calls take the given durations on a fake clock, and a log of the calls."""
    clock, log = [0.0], []
    monkeypatch.setattr(timing, "_now", lambda: clock[0])

    def engine(name):
        steps = iter(durations[name])

        def call():
            log.append(name)
            clock[0] += next(steps)
        return call
    return {name: engine(name) for name in durations}, log


def test_rounds_are_interleaved_and_the_median_counts(monkeypatch):
    # per engine: warm-up, calibration, then one call per round (min_round_s 0)
    fns, log = _fake_clock(monkeypatch, {"A": [9.0, 3.0, 1.0, 5.0, 2.0],
                                         "B": [9.0, 3.0, 4.0, 4.0, 7.0]})
    timed = B.interleaved(fns, {"A": lambda: None, "B": lambda: None}, rounds=3, min_round_s=0.0)
    assert log == ["A", "A", "B", "B", "A", "B", "A", "B", "A", "B"]
    assert timed == {"A": (2.0, 1), "B": (4.0, 1)}


def test_a_round_repeats_short_calls_to_last_min_round_s(monkeypatch):
    fns, log = _fake_clock(monkeypatch, {"A": [0.5] + [0.01] * 12})
    timed = B.interleaved(fns, {"A": lambda: None}, rounds=2, min_round_s=0.05)
    assert len(log) == 2 + 2 * 5
    seconds, calls = timed["A"]
    assert calls == 5 and seconds == pytest.approx(0.01)


def test_startup_runs_a_fresh_process_cold_then_warm():
    rows, notes = B.measure_startup(["numpy"])
    assert notes == []
    (row,) = rows
    assert row["backend"] == "numpy"
    for run in ("cold", "warm"):
        for key in ("import_s", "get_backend_s", "first_call_s", "second_call_s", "process_s"):
            assert row[run][key] >= 0
        assert row[run]["process_s"] >= row[run]["import_s"]


def test_startup_failure_is_a_note():
    rows, notes = B.measure_startup(["no-such-backend"])
    assert rows == []
    assert notes and "no-such-backend" in notes[0] and "known backends" in notes[0]


def test_fast_blas_runs_in_a_child_without_the_openblas_settings():
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "a", "--no-torch", "--fast-blas",
                     "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # the child saw neither variable, whatever this process has
    assert data["environment"]["blas_env"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    assert data["child"]["changed"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    assert data["child"]["kernel_in_child"] and data["child"]["kernel_here"]
    assert [(r["layer"], r["engine"]) for r in data["ops"]] == [("a", "numpy")] * 2
    text = render(data)
    assert "measured in a child process with OPENBLAS_CORETYPE unset" in text
    assert "BLAS kernel in that child" in text


def test_threads_runs_in_a_child_with_every_pool_limited():
    result = _invoke(*TINY, "--backends", "numpy", "--layers", "pool", "--no-torch",
                     "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["environment"]["threads"] == 1
    assert data["child"]["changed"] == {name: "1" for name in B.THREAD_ENV}
    assert str(data["environment"]["backend_threads"]["numpy"]) == "1"


def test_child_env_changes_only_what_it_says(monkeypatch):
    monkeypatch.setenv("POLYCNN_TEST_KEEP", "yes")
    env, changed = B.child_env(unset=("POLYCNN_TEST_KEEP",), threads=3)
    assert "POLYCNN_TEST_KEEP" not in env and changed["POLYCNN_TEST_KEEP"] is None
    assert all(env[name] == "3" == changed[name] for name in B.THREAD_ENV)
    assert env[B.CHILD_MARKER] == "1"
    env, changed = B.child_env()
    assert changed == {} and env["PATH"] == os.environ["PATH"]


def test_training_is_skipped_with_a_note_without_the_model_stack(monkeypatch):
    monkeypatch.delattr(pc, "Sequential", raising=False)
    result = _invoke("bench", "--quick", "--no-ops", "--training", "--backends", "numpy",
                     "--no-torch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["training"] == []
    assert any(n.startswith("training skipped") and "Sequential" in n for n in data["notes"])


def test_training_rows_for_both_models_on_every_engine():
    data = B.run(B.BenchConfig(backends=["numpy"], ops=False, training=True, startup=False,
                               rounds=1, train_steps=2, batch_divisor=8))
    json.dumps(data)  # what --json prints
    assert data["ops"] == [] and data["matmul"] is None
    engines = data["engines"]
    rows = data["training"]
    assert [(r["model"], r["engine"]) for r in rows] == [
        (m, e) for m in ("lenet5", "shapes") for e in engines]
    for r in rows:
        assert r["images_per_s"] > 0 and r["steps"] == 2
        assert (r["model"], r["input"], r["batch"]) in {("lenet5", "1x28x28", 8),
                                                        ("shapes", "3x64x64", 4)}
        if "torch" in engines:
            assert r["speed_vs_torch"] == (1.0 if r["engine"] == "torch" else
                                           pytest.approx(r["images_per_s"] / next(
                                               t["images_per_s"] for t in rows
                                               if t["model"] == r["model"]
                                               and t["engine"] == "torch")))
    table = render(data)
    assert "images/s" in table and "lenet5" in table and "matmul" not in table


def test_peak_fraction_only_for_host_engines_with_flops():
    rows = [{"gflops": 50.0, "device": False, "peak_fraction": None},
            {"gflops": 5000.0, "device": True, "peak_fraction": None},
            {"gflops": None, "device": False, "peak_fraction": None}]
    B.add_peak_fractions(rows, 200.0)
    assert [r["peak_fraction"] for r in rows] == [0.25, None, None]


def test_benchmark_script_prints_the_same_table():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "conv_layers.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--rounds", "1", "--layers", "a",
                           "--backends", "numpy", "--no-torch", "--matmul-size", "256"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "conv and max pool, float32" in proc.stdout and "training" not in proc.stdout
    assert [line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("a ")] == [
        ["a", "fwd"], ["a", "fwd+bwd"]]


@pytest.mark.parametrize("load, noted", [(3.0, True), (0.2, False), (None, False)])
def test_a_busy_machine_is_noted(monkeypatch, load, noted):
    for module in (core, machine):  # the run's notes, and the environment's record
        monkeypatch.setattr(module, "load_average", lambda: load)
    result = B.run(B.BenchConfig(backends=["numpy"], ops=False, training=False, startup=False,
                                 torch=False))
    busy = [n for n in result["notes"] if n.startswith("the load average was")]
    assert bool(busy) == noted
    if noted:
        assert "3.0" in busy[0] and "--threads 1" in busy[0]


def test_step_share_script_times_conv_and_pool_apart(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "step_share.py"
    spec = importlib.util.spec_from_file_location("step_share", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure("numpy", steps=2, rounds=2, batch=8)
    assert 0.0 < r["outside_share"] < 1.0 and r["step_ms"] > 0
    be = __import__("polycnn").get_backend("numpy")
    assert "conv2d_forward" not in vars(be)  # the timers were taken off the shared backend
    mod.main(["--backends", "numpy", "--steps", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "outside conv+pool" in out and out.splitlines()[-1].startswith("numpy")


def _part(engine, ms, ips, peak):
    """A fabricated result of one --isolate child (one engine), in run()'s shape."""
    return {
        "config": {"rounds": 3, "quick": False, "batch_divisor": 1},
        "environment": {"backend_threads": {engine: 2}, "torch": "2.x" if engine == "torch" else None,
                        "load_average_end": 0.5},
        "engines": [engine], "matmul": {"n": 64, "gflops": peak},
        "ops": [{"layer": layer, "pass": p, "engine": engine, "ms": ms * k, "gflops": 10.0 / k,
                 "peak_fraction": None, "device": False, "time_vs_torch": None}
                for layer, k in (("b", 2.0), ("a", 1.0)) for p in ("fwd+bwd", "fwd")],
        "training": [{"model": "lenet5", "engine": engine, "images_per_s": ips,
                      "speed_vs_torch": None}],
        "startup": [], "notes": [f"{engine} note", "shared note"], "child": {"changed": {}},
    }


def test_isolated_parts_merge_side_by_side_with_ratios_to_torch():
    merged = B.merge_isolated([_part("numpy", 2.0, 100.0, 150.0), _part("numba", 1.0, 300.0, 200.0),
                               _part("torch", 4.0, 200.0, 180.0)])
    assert merged["engines"] == ["numpy", "numba", "torch"] and "child" not in merged
    assert merged["config"]["isolated"] is True
    assert merged["matmul"]["gflops"] == 200.0  # the best peak of any child
    keys = [(r["layer"], r["pass"], r["engine"]) for r in merged["ops"]]
    assert keys[:3] == [("a", "fwd", "numpy"), ("a", "fwd", "numba"), ("a", "fwd", "torch")]
    assert keys[-1] == ("b", "fwd+bwd", "torch")
    ratio = {(r["layer"], r["pass"], r["engine"]): r["time_vs_torch"] for r in merged["ops"]}
    assert ratio[("b", "fwd", "numpy")] == 0.5 and ratio[("a", "fwd+bwd", "numba")] == 0.25
    assert ratio[("a", "fwd", "torch")] == 1.0
    assert merged["ops"][0]["peak_fraction"] == 10.0 / 200.0
    speed = {r["engine"]: r["speed_vs_torch"] for r in merged["training"]}
    assert speed == {"numpy": 0.5, "numba": 1.5, "torch": 1.0}
    assert merged["notes"].count("shared note") == 1 and "numba note" in merged["notes"]
    busy = [_part(e, 1.0, 1.0, 1.0) for e in ("numpy", "torch")]
    busy[0]["notes"].append(f"{B.BUSY_NOTE} 1.1 on 2 cores before the run")
    busy[1]["notes"].append(f"{B.BUSY_NOTE} 1.3 on 2 cores before the run")
    assert sum(n.startswith(B.BUSY_NOTE) for n in B.merge_isolated(busy)["notes"]) == 1


def test_repeated_isolated_children_merge_as_medians():
    """--isolate --repeat 3: three children per engine (alternating) become one row per case,
    its time the median of the three (GFLOP/s with it), ratios taken after that."""
    parts = []
    for numba_ms, torch_ms in ((1.0, 4.0), (9.0, 2.0), (2.0, 3.0)):
        parts += [_part("numba", numba_ms, 300.0 / numba_ms, 200.0),
                  _part("torch", torch_ms, 200.0, 150.0 + torch_ms)]
    for part in parts:
        for r in part["ops"]:
            r["gflops"] = 10.0 / r["ms"]  # 10 MFLOP a call, so GFLOP/s follows the time
    parts[2]["notes"].append(f"{B.BUSY_NOTE} 1.2 on 2 cores before the run")
    parts[4]["notes"].append(f"{B.BUSY_NOTE} 1.5 on 2 cores before the run")
    merged = B.merge_isolated(parts)
    assert merged["engines"] == ["numba", "torch"] and merged["config"]["repeats"] == 3
    row = {(r["layer"], r["pass"], r["engine"]): r for r in merged["ops"]}
    assert row[("a", "fwd", "numba")]["ms"] == 2.0 and row[("a", "fwd", "torch")]["ms"] == 3.0
    assert row[("b", "fwd", "numba")]["ms"] == 4.0  # k = 2 for layer b
    assert row[("a", "fwd", "numba")]["gflops"] == 10.0 / 2.0
    assert row[("a", "fwd", "numba")]["time_vs_torch"] == 2.0 / 3.0
    assert merged["matmul"]["gflops"] == 200.0
    speed = {r["engine"]: r["speed_vs_torch"] for r in merged["training"]}
    assert speed["numba"] == 150.0 / 200.0  # the median of 300, 33.3, 150 images/s
    assert sum(n.startswith(B.BUSY_NOTE) for n in merged["notes"]) == 1


@pytest.mark.parametrize("as_json", [True, False])
def test_isolate_runs_each_engine_in_its_own_child(as_json):
    args = ["bench", "--isolate", "--quick", "--rounds", "1", "--layers", "a",
            "--backends", "numpy,numba", "--no-torch", "--no-training", "--matmul-size", "64"]
    result = CliRunner().invoke(main, args + (["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    if as_json:
        out = json.loads(result.output.strip().splitlines()[-1])
        assert out["engines"] == ["numpy", "numba"] and out["config"]["isolated"] is True
        assert {r["engine"] for r in out["ops"]} == {"numpy", "numba"}
    else:
        assert "each engine in a process of its own (--isolate)" in result.output
        after = result.stdout.split("conv and max pool, float32\n", 1)[1]
        lines = after.split("\n\n", 1)[0].splitlines()  # header, rule, rows
        column = lines[0].index("engine")
        assert [line[column:].split()[0] for line in lines[2:]] == ["numpy", "numba", "numpy",
                                                                     "numba"]
