"""`polycnn demo` prints the tutorial's numbers exactly, on every backend."""

import json

import numpy as np
from click.testing import CliRunner

from polycnn.cli.main import main

# DESIGN.md's worked example, typed in by hand (not computed)
CONV = [[155, -155, 155, -155], [-155, 310, -155, 155], [310, 155, 310, 0], [-155, -155, -155, 0]]
RELU = [[155, 0, 155, 0], [0, 310, 0, 155], [310, 155, 310, 0], [0, 0, 0, 0]]


def test_demo_json_numbers(backend):
    result = CliRunner().invoke(main, ["demo", "--backend", backend.name, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["backend"] == backend.name
    assert out["convolution"] == CONV
    assert out["relu"] == RELU
    padded = np.zeros((6, 6))
    padded[1:5, 1:5] = RELU
    assert out["padded"] == padded.tolist()
    assert out["maxpool"][0][0] == 155  # max of [[0, 0], [0, 155]]
    assert out["maxpool"] == padded.reshape(3, 2, 3, 2).max(axis=(1, 3)).tolist()


def test_demo_text_shows_the_matrices():
    result = CliRunner().invoke(main, ["demo", "--backend", "numpy"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert " 155 -155  155 -155" in text
    assert "-155  310 -155  155" in text
    assert "255 100 100 100 255 255" in text
    assert "155 155   0" in text  # first row of the pooled map


def test_demo_unknown_backend_is_one_line_exit_2():
    result = CliRunner().invoke(main, ["demo", "--backend", "no-such-backend"])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "unknown backend 'no-such-backend'" in lines[0]
    assert "numpy" in lines[0]  # lists the known names


def test_ctrl_c_anywhere_is_one_line_exit_130(monkeypatch):
    import polycnn.tutorial

    def interrupted(backend):
        raise KeyboardInterrupt

    monkeypatch.setattr(polycnn.tutorial, "worked_example", interrupted)
    result = CliRunner().invoke(main, ["demo", "--backend", "numpy"])
    assert result.exit_code == 130
    assert result.output.strip() == "interrupted"
