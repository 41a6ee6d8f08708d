"""Interchange: ONNX export run in onnxruntime against pc.predict, safetensors round trips,
PyTorch weights in (against PyTorch's own outputs); the command line is in tests/cli/test_export_cli.py.

Comparisons are relative to the largest output: max |got - want| / max |want| <= 1e-5 (float32).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from support.interchange import assert_close, ort_run, ort_session, randomize

import polycnn as pc
from polycnn import models
from polycnn.datasets import standardize

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'polycnn[onnx]')")
ort = pytest.importorskip("onnxruntime",
                          reason="onnxruntime is not installed (pip install 'polycnn[onnx]')")
st_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")




def every_layer(kind: str):
    """Every layer kind polycnn has: stride, dilation, 'same' with an even kernel (the odd pixel
    goes bottom / right), asymmetric pairs, BatchNorm, LeakyReLU, padded max and average pools,
    both dropouts, global average pooling or Flatten, Linear with and without a bias."""
    body = [pc.Conv2d(3, 4, kernel_size=3, padding="same", dilation=2), pc.BatchNorm2d(4),
            pc.LeakyReLU(0.1),
            pc.Conv2d(4, 5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), pc.ReLU(),
            pc.MaxPool2d(3, stride=2, padding=1), pc.Dropout2d(0.25),
            pc.AvgPool2d(3, stride=1, padding=1),
            pc.Conv2d(5, 6, kernel_size=2, padding="same", bias=False), pc.BatchNorm2d(6)]
    if kind == "gap":
        head = [pc.GlobalAvgPool2d(), pc.Dropout(0.3), pc.Linear(6, 7), pc.ReLU(),
                pc.Linear(7, 3, bias=False)]
    else:
        head = [pc.AvgPool2d((2, 3), stride=(2, 1), padding=(1, 1)), pc.Flatten(), pc.Dropout(0.5),
                pc.Linear(6 * 3 * 5, 3)]
    return randomize(pc.Sequential(*body, *head, backend="numpy", seed=3))


#: name -> (model builder, one sample's shape)
MODELS = {
    "tutorial": (lambda: randomize(models.tutorial((3, 32, 32), 3, backend="numpy")), (3, 32, 32)),
    "lenet5": (lambda: randomize(models.lenet5((1, 28, 28), 10, backend="numpy")), (1, 28, 28)),
    "shapes-cnn": (lambda: randomize(models.shapes_cnn((3, 12, 20), 4, backend="numpy")), (3, 12, 20)),
    "every-layer-gap": (lambda: every_layer("gap"), (3, 13, 11)),
    "every-layer-flatten": (lambda: every_layer("flatten"), (3, 13, 11)),
}


def test_every_preset_is_covered():
    assert set(models.PRESETS) <= set(MODELS), "a preset model without an ONNX round trip"


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_matches_predict(name, tmp_path):
    build, shape = MODELS[name]
    model = build()
    rng = np.random.default_rng(7)
    path = tmp_path / "m.onnx"
    pc.export_onnx(model, path, shape, softmax=True)
    session = ort_session(path)
    for n in (1, 5):  # NOTE: the batch dimension is dynamic
        x = rng.uniform(0.0, 1.0, (n, *shape)).astype(np.float32)
        got = ort_run(session, x)
        want = pc.predict(model, x)
        assert_close(got, want, f"{name}: onnxruntime vs pc.predict, batch {n}")
        assert (got.argmax(1) == want.argmax(1)).all(), f"{name}: classes differ"
    # the logits too (a softmax hides small differences in large logits)
    pc.export_onnx(model, tmp_path / "logits.onnx", shape)
    x = rng.uniform(0.0, 1.0, (3, *shape)).astype(np.float32)
    assert_close(ort_run(ort_session(tmp_path / "logits.onnx"), x),
                 model.backend.to_numpy(model.eval()(x)), f"{name}: logits")


def test_onnx_graph_and_metadata(tmp_path):
    model = every_layer("gap")
    path = pc.export_onnx(model, tmp_path / "m.onnx", (3, 13, 11), class_names=["a", "b", "c"],
                          normalize=((0.5, 0.4, 0.3), (0.2, 0.25, 0.5)), metadata={"run": "x"})
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    (inp,), (out,) = m.graph.input, m.graph.output
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 13, 11]
    assert out.name == "logits" and out.type.tensor_type.shape.dim[1].dim_value == 3
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["polycnn.classes"]) == ["a", "b", "c"]
    assert json.loads(props["polycnn.normalize"]) == {"mean": [0.5, 0.4, 0.3],
                                                      "std": [0.2, 0.25, 0.5], "in_graph": True}
    assert json.loads(props["polycnn.input_shape"]) == [3, 13, 11] and props["run"] == "x"
    ops = [n.op_type for n in m.graph.node]
    assert "Dropout" not in ops and ops[:2] == ["Sub", "Div"]
    assert all(n.op_type != "Conv" or not any(a.name == "auto_pad" for a in n.attribute)
               for n in m.graph.node)
    avg = [n for n in m.graph.node if n.op_type == "AveragePool"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in avg for a in n.attribute
               if a.name == "count_include_pad")
    names = {i.name for i in m.graph.initializer}
    assert {"0.weight", "1.running_mean", "1.running_var", "14.weight"} <= names


def test_onnx_float64_model_is_a_float64_graph(tmp_path):
    """onnxruntime's CPU provider has no float64 Conv: the graph is checked, not run."""
    spec = every_layer("gap").spec()
    spec["dtype"] = "float64"
    model = pc.Sequential.from_spec(spec, backend="numpy")
    m = onnx.load(pc.export_onnx(model, tmp_path / "m.onnx", (3, 13, 11)))
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert {i.data_type for i in m.graph.initializer} == {onnx.TensorProto.DOUBLE}


def test_onnx_normalisation_is_in_the_graph(tmp_path):
    model = every_layer("flatten")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    pc.export_onnx(model, tmp_path / "m.onnx", (3, 13, 11), normalize=(mean, std), softmax=True)
    x = np.random.default_rng(0).uniform(0, 1, (4, 3, 13, 11)).astype(np.float32)
    got = ort_run(ort_session(tmp_path / "m.onnx"), x)
    assert_close(got, pc.predict(model, standardize(x, mean, std)), "normalised in the graph")
    # and the normalisation matters: without it the outputs differ
    assert not np.allclose(got, pc.predict(model, x), rtol=1e-3)


def test_onnx_refuses_a_layer_it_cannot_export(tmp_path):
    class Square(pc.ReLU):  # NOTE: a subclass computes something else: refused, not exported as ReLU
        def forward(self, x):
            return x * x

    model = pc.Sequential(pc.Conv2d(1, 2, 3), Square(), pc.Flatten(), pc.Linear(2 * 4 * 4, 2),
                          backend="numpy")
    with pytest.raises(ValueError, match=r"layer 1 .*cannot be exported to ONNX"):
        pc.export_onnx(model, tmp_path / "m.onnx", (1, 6, 6))
    with pytest.raises(ValueError, match="opset must be 17"):
        pc.export_onnx(model, tmp_path / "m.onnx", (1, 6, 6), opset=13)
    with pytest.raises(ValueError, match="class_names has 3 names"):
        pc.export_onnx(pc.Sequential(pc.Flatten(), pc.Linear(36, 2), backend="numpy"),
                       tmp_path / "m.onnx", (1, 6, 6), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="layer 3"):
        pc.export_onnx(model, tmp_path / "m.onnx", (1, 7, 7))
    assert os.listdir(tmp_path) == []


# ---- safetensors ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_safetensors_round_trip_is_bit_identical(dtype, tmp_path):
    spec = models.shapes_cnn((3, 12, 12), 4, backend="numpy").spec()
    spec["dtype"] = dtype
    a = randomize(pc.Sequential.from_spec(spec, backend="numpy", seed=0), seed=5)
    b = pc.Sequential.from_spec(spec, backend="numpy", seed=9)
    pc.save_weights(a, tmp_path / "a.safetensors")
    assert pc.load_weights(b, tmp_path / "a.safetensors") is b
    for name, arr in a.named_arrays().items():
        other = b.named_arrays()[name]
        assert other.dtype == arr.dtype and other.tobytes() == arr.tobytes(), f"{name} differs"
    pc.save_weights(b, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    header, meta = pc.interchange.read_safetensors_header(tmp_path / "a.safetensors")
    assert header["1.running_var"] == ((16,), dtype)
    assert json.loads(meta["polycnn"])["architecture"]["dtype"] == dtype


def test_load_weights_reports_every_mismatch_and_changes_nothing(tmp_path):
    model = randomize(models.lenet5((1, 28, 28), 10, backend="numpy"))
    arrays = {k: np.array(v) for k, v in model.named_arrays().items()}
    bad = dict(arrays)
    bad["0.wieght"] = bad.pop("0.weight")               # a wrong name: unexpected + missing
    bad["3.weight"] = np.zeros((16, 6, 3, 3), np.float32)  # a wrong shape
    bad["7.bias"] = bad["7.bias"].astype(np.float64)      # a wrong dtype
    del bad["11.bias"]                                    # missing
    st_numpy.save_file(bad, tmp_path / "bad.safetensors")
    before = {k: v.tobytes() for k, v in arrays.items()}
    with pytest.raises(ValueError) as info:
        pc.load_weights(randomize(model), tmp_path / "bad.safetensors")
    msg = str(info.value)
    assert "\n" not in msg and "5 problems" in msg
    for needle in ("unexpected 0.wieght", "missing 0.weight", "3.weight: shape (16, 6, 3, 3), the model"
                   " has (16, 6, 5, 5)", "7.bias: float64, the model is float32", "missing 11.bias"):
        assert needle in msg
    assert {k: np.asarray(v).tobytes() for k, v in model.named_arrays().items()} == before


def test_load_weights_with_a_name_mapping(tmp_path):
    model = randomize(pc.Sequential(pc.Conv2d(1, 2, 3), pc.ReLU(), pc.Flatten(), pc.Linear(8, 2),
                                    backend="numpy"))
    want = {k: np.array(v) for k, v in model.named_arrays().items()}
    renamed = {"conv.w": want["0.weight"], "conv.b": want["0.bias"], "fc.w": want["3.weight"],
               "fc.b": want["3.bias"], "extra": np.zeros(3, np.float32)}
    st_numpy.save_file(renamed, tmp_path / "w.safetensors")
    mapping = {"conv.w": "0.weight", "conv.b": "0.bias", "fc.w": "3.weight", "fc.b": "3.bias",
               "extra": None}
    for names in (mapping, mapping.get):
        target = randomize(pc.Sequential(pc.Conv2d(1, 2, 3), pc.ReLU(), pc.Flatten(), pc.Linear(8, 2),
                                         backend="numpy"), seed=11)
        pc.load_weights(target, tmp_path / "w.safetensors", names=names)
        for k, v in target.named_arrays().items():
            assert v.tobytes() == want[k].tobytes(), k
    with pytest.raises(ValueError, match=r"unexpected extra float32 \(3,\)"):
        pc.load_weights(target, tmp_path / "w.safetensors", names={k: v for k, v in mapping.items()
                                                                   if v is not None})


# ---- PyTorch weights in --------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install polycnn[torch])")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def torch_lenet5(nn, classes=10):
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, classes))


def torch_shapes_cnn(nn, classes=4):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


@pytest.mark.parametrize("source", ["state_dict", "safetensors"])
@pytest.mark.parametrize("arch", ["lenet5", "shapes-cnn"])
def test_torch_weights_give_torch_outputs(arch, source, torch, tmp_path):
    torch.manual_seed(0)
    if arch == "lenet5":
        net, shape = torch_lenet5(torch.nn), (1, 28, 28)
        model = models.lenet5(shape, 10, backend="numpy", seed=1)
    else:
        net, shape = torch_shapes_cnn(torch.nn), (3, 12, 12)
        model = models.shapes_cnn(shape, 4, backend="numpy", seed=1)
        with torch.no_grad():  # NOTE: running statistics that are not the initial 0 / 1
            for _ in range(3):
                net(torch.rand(8, *shape) * 2)
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    net.eval()
    x = np.random.default_rng(2).uniform(0, 1, (4, *shape)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    if source == "state_dict":
        pc.from_torch_state_dict(model, net.state_dict())
    else:
        from safetensors.torch import save_file

        save_file(net.state_dict(), tmp_path / "net.safetensors")
        pc.from_torch_state_dict(model, tmp_path / "net.safetensors")
    assert_close(model.backend.to_numpy(model.eval()(x)), want, f"{arch} from {source} vs torch")


def test_torch_mismatches_are_all_reported(torch):
    net = torch_lenet5(torch.nn, classes=5)
    net[3] = torch.nn.Conv2d(6, 16, 3)
    model = models.lenet5((1, 28, 28), 10, backend="numpy")
    with pytest.raises(ValueError) as info:
        pc.from_torch_state_dict(model, net.state_dict())
    msg = str(info.value)
    for needle in ("3.weight: shape (16, 6, 3, 3), the model has (16, 6, 5, 5)",
                   "11.weight: shape (5, 84), the model has (10, 84)",
                   "11.bias: shape (5,)"):
        assert needle in msg, msg
    with pytest.raises(ValueError, match="the state dict has 4 modules with weights"):
        pc.from_torch_state_dict(model, {k: v for k, v in net.state_dict().items()
                                         if not k.startswith("11.")})
