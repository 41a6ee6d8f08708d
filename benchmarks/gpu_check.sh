#!/usr/bin/env bash
# GPU check for the `cupy` backend, for a machine with an NVIDIA GPU and NO network:
#   1. the GPU tests (`pytest -m gpu`: every op test on real CuPy, large convs, training steps);
#   2. a benchmark of the cupy backend against PyTorch + cuDNN on the same GPU: conv forward and
#      forward+backward on the layers (a)-(e) of notes/perf-baseline.md, in fp32 and with
#      precision="tf32" (tensor cores) against cuDNN's TF32, and training images/s of the shapes
#      CNN (3x64x64, batch 128), eager and as a CUDA graph (pc.CapturedStep);
#   3. `polycnn bench --backends cupy --quick` (the CPU-side benchmark, for the record).
# Needs: Python >= 3.10 with numpy, cupy (cupy-cuda12x or -13x), torch with CUDA, pytest, click,
# numba. Installs nothing: polycnn runs from this checkout through PYTHONPATH (a folder of links
# that mirrors the installed layout, polycnn.kernels and polycnn.cli included).
# Usage: bash benchmarks/gpu_check.sh   (53 s on an H100 with POLYCNN_BENCH_TIMEOUT=0 before the TF32
#        and graph rows were added, not timed since; each step has its own timeout, so the whole
#        script ends within 8 minutes whatever happens)
# Environment: PYTHON (default python3), PYTEST_TIMEOUT (200 s), BENCH_TIMEOUT (150 s),
#              POLYCNN_BENCH_TIMEOUT (90 s; 0 skips step 3),
#              GPU_CHECK_DRY=1 (no GPU needed: step 2 on cupy-emu and PyTorch's CPU at tiny sizes,
#              to check the script itself before spending device time; its timings mean nothing).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-200}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-150}"
POLYCNN_BENCH_TIMEOUT="${POLYCNN_BENCH_TIMEOUT:-90}"
status=0
section() { printf '\n==== %s ==== (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

section "environment"
uname -a
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
"$PY" --version
"$PY" -m pip list 2>/dev/null | grep -i -E '^(cupy|torch|numba|numpy|pytest|click|nvidia-cuda-nvrtc|cuda-bindings) ' || true
git log -1 --oneline 2>/dev/null || true

SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/polycnn"
for entry in "$ROOT"/src/polycnn/*; do ln -s "$entry" "$SHIM/polycnn/"; done
ln -s "$ROOT/kernels" "$SHIM/polycnn/kernels"
ln -s "$ROOT/cli" "$SHIM/polycnn/cli"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
"$PY" - <<'PY' || status=1
import polycnn as pc
print("polycnn from", pc.__file__)
for name, state in pc.available_backends().items():
    print(f"  {name:9} {'available: ' + str(pc.get_backend(name).info()) if state is True else 'unavailable: ' + state}")
PY

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    echo "GPU_CHECK_DRY=1: step 1 (pytest -m gpu) and step 3 skipped; step 2 on cupy-emu and the CPU"
    POLYCNN_BENCH_TIMEOUT=0
else
    section "1. pytest -m gpu (timeout ${PYTEST_TIMEOUT}s)"
    timeout "$PYTEST_TIMEOUT" "$PY" -m pytest -m gpu -q -ra -p no:cacheprovider \
        --continue-on-collection-errors tests 2>&1 | tail -n 60
    rc=${PIPESTATUS[0]}
    echo "pytest exit status: $rc"
    [ "$rc" -eq 0 ] || status=1
fi

section "2. cupy vs PyTorch + cuDNN on the GPU (timeout ${BENCH_TIMEOUT}s)"
timeout "$BENCH_TIMEOUT" "$PY" - <<'PY'
import statistics
import sys
import time

import numpy as np

import polycnn as pc

import os  # noqa: E402

# GPU_CHECK_DRY=1: the same code on cupy-emu and PyTorch's CPU at tiny sizes, to check the script
# itself on a machine without a GPU before spending device time (its timings mean nothing)
DRY = os.environ.get("GPU_CHECK_DRY") == "1"
be = pc.get_backend("cupy-emu" if DRY else "cupy")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

print("cupy backend:", be.info())
dev = torch.device("cpu" if DRY else "cuda")
if not DRY:
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()},"
          f" device {torch.cuda.get_device_name(0)}")
torch.backends.cudnn.benchmark = True

# name: x shape, w shape, stride, padding (notes/perf-baseline.md)
LAYERS = {
    "a": ((64, 1, 28, 28), (6, 1, 3, 3), 1, 1),
    "b": ((64, 32, 32, 32), (64, 32, 3, 3), 1, 1),
    "c": ((32, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    "d": ((64, 3, 64, 64), (16, 3, 5, 5), 1, 2),
    "e": ((64, 32, 32, 32), (64, 32, 3, 3), 2, 1),
}
if DRY:
    LAYERS = {k: ((1,) + xs[1:], ws, stride, pad) for k, (xs, ws, stride, pad) in LAYERS.items()}


def timed(fn, sync, reps=20, rounds=5):
    if DRY:
        reps, rounds = 1, 1
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def set_tf32(flag):
    torch.backends.cudnn.allow_tf32 = flag
    torch.backends.cuda.matmul.allow_tf32 = flag


cupy_sync = be.synchronize
torch_sync = (lambda: None) if DRY else torch.cuda.synchronize
rows = []
for name, (xs, ws, stride, pad) in LAYERS.items():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) * 0.1).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    y0, _ = pc.get_backend("numpy").conv2d_forward(x, w, b, stride=stride, padding=pad)
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    flops = 2 * np.prod(y0.shape) * np.prod(ws[1:])
    cx, cw, cb, cdy = (be.asarray(a) for a in (x, w, b, dy))

    def c_fwd():
        return be.conv2d_forward(cx, cw, cb, stride=stride, padding=pad)

    def c_fwdbwd():
        y, ctx = be.conv2d_forward(cx, cw, cb, stride=stride, padding=pad)
        return be.conv2d_backward(cdy, ctx)

    def c_fwd_tf32():
        return be.conv2d_forward(cx, cw, cb, stride=stride, padding=pad, precision="tf32")

    def c_fwdbwd_tf32():
        y, ctx = be.conv2d_forward(cx, cw, cb, stride=stride, padding=pad, precision="tf32")
        return be.conv2d_backward(cdy, ctx)

    tx = torch.from_numpy(x).to(dev).requires_grad_(True)
    tw = torch.from_numpy(w).to(dev).requires_grad_(True)
    tb = torch.from_numpy(b).to(dev).requires_grad_(True)
    tdy = torch.from_numpy(dy).to(dev)

    def t_fwd():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, stride=stride, padding=pad)

    def t_fwdbwd():
        y = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
        return torch.autograd.grad(y, (tx, tw, tb), tdy)

    # correctness on the very inputs timed, against cuDNN in strict float32
    set_tf32(False)
    y, ctx = c_fwd()
    err = float(np.abs(be.to_numpy(y) - t_fwd().cpu().numpy()).max())
    y32, _ = c_fwd_tf32()
    ref = t_fwd().cpu().numpy()
    err_tf32 = float(np.abs(be.to_numpy(y32) - ref).max() / max(1e-30, np.abs(ref).max()))
    r = {"layer": name, "gflop": flops / 1e9, "max_err_vs_torch": err, "tf32_rel_err": err_tf32,
         "cupy_fwd": timed(c_fwd, cupy_sync), "cupy_fb": timed(c_fwdbwd, cupy_sync),
         "cupy_tf32_fwd": timed(c_fwd_tf32, cupy_sync), "cupy_tf32_fb": timed(c_fwdbwd_tf32, cupy_sync)}
    for flag, tag in ((False, "fp32"), (True, "tf32")):
        set_tf32(flag)
        r[f"torch_{tag}_fwd"] = timed(t_fwd, torch_sync)
        r[f"torch_{tag}_fb"] = timed(t_fwdbwd, torch_sync)
    rows.append(r)

print("\nconv2d, float32, ms per call (median of 5 rounds of 20); ratio = torch time / cupy time"
      " (cupy's share of cuDNN's throughput; target >= 0.5 on b-e, fwd+bwd)")
print(f"{'layer':5} {'GFLOP':>6} {'cupy fwd':>9} {'GFLOP/s':>8} {'cuDNN fp32':>10} {'ratio':>6} {'cuDNN tf32':>10}"
      f" {'ratio':>6} | {'cupy f+b':>9} {'cuDNN fp32':>10} {'ratio':>6} {'cuDNN tf32':>10} {'ratio':>6} {'max err':>8}")
for r in rows:
    print(f"{r['layer']:5} {r['gflop']:6.2f} {r['cupy_fwd']*1e3:9.3f} {r['gflop']/r['cupy_fwd']:8.0f}"
          f" {r['torch_fp32_fwd']*1e3:10.3f} {r['torch_fp32_fwd']/r['cupy_fwd']:6.2f}"
          f" {r['torch_tf32_fwd']*1e3:10.3f} {r['torch_tf32_fwd']/r['cupy_fwd']:6.2f} |"
          f" {r['cupy_fb']*1e3:9.3f} {r['torch_fp32_fb']*1e3:10.3f} {r['torch_fp32_fb']/r['cupy_fb']:6.2f}"
          f" {r['torch_tf32_fb']*1e3:10.3f} {r['torch_tf32_fb']/r['cupy_fb']:6.2f} {r['max_err_vs_torch']:8.1e}")
print("\nconv2d, precision='tf32' (tensor cores, 64x64 WMMA tile) against cuDNN with allow_tf32, ms per"
      " call; ratio = cuDNN tf32 time / cupy tf32 time; rel err = max |cupy tf32 - cuDNN fp32| / max |y|")
print(f"{'layer':5} {'tf32 fwd':>9} {'GFLOP/s':>8} {'cuDNN tf32':>10} {'ratio':>6} {'vs fp32':>7} |"
      f" {'tf32 f+b':>9} {'cuDNN tf32':>10} {'ratio':>6} {'vs fp32':>7} {'rel err':>8}")
for r in rows:
    print(f"{r['layer']:5} {r['cupy_tf32_fwd']*1e3:9.3f} {r['gflop']/r['cupy_tf32_fwd']:8.0f}"
          f" {r['torch_tf32_fwd']*1e3:10.3f} {r['torch_tf32_fwd']/r['cupy_tf32_fwd']:6.2f}"
          f" {r['cupy_fwd']/r['cupy_tf32_fwd']:7.2f} | {r['cupy_tf32_fb']*1e3:9.3f}"
          f" {r['torch_tf32_fb']*1e3:10.3f} {r['torch_tf32_fb']/r['cupy_tf32_fb']:6.2f}"
          f" {r['cupy_fb']/r['cupy_tf32_fb']:7.2f} {r['tf32_rel_err']:8.1e}")
sys.stdout.flush()

# where the time of cupy's fwd+bwd goes, pass by pass (layers b to e)
from polycnn.backends import cupy_backend as cb  # noqa: E402
from polycnn.geometry import conv_geometry  # noqa: E402

for name in ("b", "c", "d", "e"):
    xs, ws, stride, pad = LAYERS[name]
    g = conv_geometry(xs, ws, stride, pad)
    x = be.asarray(np.random.default_rng(0).standard_normal(xs).astype(np.float32))
    w = be.asarray(np.random.default_rng(1).standard_normal(ws).astype(np.float32))
    dy = be.asarray(np.random.default_rng(2).standard_normal(g.y_shape).astype(np.float32))
    wsplits = be._weight_splits(g, 4)[0]
    bsplits = be._bias_splits(g)[0]
    parts = {
        "fwd": lambda: be._conv2d_forward(x, w, None, g),
        f"bwd_data ({g.stride_h * g.stride_w} phases)": lambda: be._conv_bwd_data(dy, w, g),
        f"bwd_weight ({wsplits} splits, reduce)": lambda: be._conv_bwd_weight(dy, x, g),
        f"bias_grad ({bsplits} splits, reduce)": lambda: be._bias_grad(dy, g),
    }
    times = {k: timed(f, cupy_sync) * 1e3 for k, f in parts.items()}
    tiles = {op: "x".join(map(str, cb.TILES[cb.gemm_tile(r, c)])) for op, r, c in (
        ("fwd", g.K, g.N * g.P * g.Q), ("bwd_data", g.C, be._bwd_data_columns(g)),
        ("bwd_weight", g.K, g.C * g.R * g.S))}
    if g.C <= cb.FEWC_MAX:
        tiles["bwd_data"] = "one thread a pixel"
    print(f"layer {name} (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in times.items())
          + f"; tiles {tiles}")

# host-side cost of one call, on a conv too small for the GPU to matter (layer a's shapes)
xs, ws, stride, pad = LAYERS["a"]
xa = be.asarray(np.zeros(xs, np.float32))
wa = be.asarray(np.zeros(ws, np.float32))
ba = be.asarray(np.zeros(ws[0], np.float32))
ya, ctxa = be.conv2d_forward(xa, wa, ba, stride=stride, padding=pad)
dya = be.xp.zeros_like(ya)
for label, fn in (("conv2d_forward", lambda: be.conv2d_forward(xa, wa, ba, stride=stride, padding=pad)),
                  ("conv2d_backward", lambda: be.conv2d_backward(dya, ctxa)),
                  ("relu_forward", lambda: be.relu_forward(ya)),
                  ("cupy add (for scale)", lambda: ya + ya)):
    print(f"host cost of {label} on layer a: {timed(fn, cupy_sync, reps=200) * 1e6:.1f} us per call")
sys.stdout.flush()

# ---- training throughput: the shapes CNN of perf-baseline.md at batch 128 ----
BATCH, STEPS = (4, 2) if DRY else (128, 20)
rng = np.random.default_rng(0)
xh = rng.standard_normal((BATCH * STEPS, 3, 64, 64)).astype(np.float32)
yh = rng.integers(0, 3, BATCH * STEPS)

model = pc.Sequential(
    pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
    pc.Conv2d(16, 32, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
    pc.Dropout(0.5), pc.Flatten(), pc.Linear(32 * 16 * 16, 3), backend=be, seed=0)
opt = pc.SGD(model.parameters(), lr=0.01, momentum=0.9)


def pc_epoch(steps=STEPS):
    losses = []
    for i in range(steps):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        opt.zero_grad()
        loss, dlogits = pc.losses.cross_entropy(be, model(xh[sl]), yh[sl])
        model.backward(dlogits, input_grad=False)  # as pc.fit does: the images need no gradient
        opt.step()
        losses.append(loss)
    be.synchronize()
    return losses


net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Dropout(0.5), torch.nn.Flatten(), torch.nn.Linear(32 * 16 * 16, 3)).to(dev)
topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()


def torch_epoch(steps=STEPS):
    losses = []
    for i in range(steps):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        xb = torch.from_numpy(xh[sl]).to(dev)
        yb = torch.from_numpy(yh[sl]).to(dev)
        topt.zero_grad()
        loss = loss_fn(net(xb), yb)
        loss.backward()
        topt.step()
        losses.append(loss.item())
    torch_sync()
    return losses


def images_per_s(fn):
    fn(min(3, STEPS))
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best.append(BATCH * STEPS / (time.perf_counter() - t0))
    return statistics.median(best)


# where the time of one cupy training step goes (host-side wall clock, synchronised)
def breakdown():
    xb, yb = xh[:BATCH], yh[:BATCH]
    parts = {}
    for _ in range(3):
        be.synchronize(); t0 = time.perf_counter()
        logits = model(xb); be.synchronize(); t1 = time.perf_counter()
        loss, dlogits = pc.losses.cross_entropy(be, logits, yb); be.synchronize(); t2 = time.perf_counter()
        opt.zero_grad(); model.backward(dlogits, input_grad=False); be.synchronize(); t3 = time.perf_counter()
        opt.step(); be.synchronize(); t4 = time.perf_counter()
        parts = {"forward": t1 - t0, "loss": t2 - t1, "backward": t3 - t2, "sgd": t4 - t3}
    return {k: round(v * 1e3, 3) for k, v in parts.items()}


cupy_ips = images_per_s(pc_epoch)
breakdown_ms = breakdown()
# the same model and optimiser as a CUDA graph (pc.CapturedStep: batches through pinned buffers,
# dropout keys and the loss on the device, the loss read back once an epoch)
def graph_ips_for(**options):
    gmodel = pc.Sequential(
        pc.Conv2d(3, 16, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
        pc.Conv2d(16, 32, kernel_size=3, padding=1), pc.ReLU(), pc.MaxPool2d(2),
        pc.Dropout(0.5), pc.Flatten(), pc.Linear(32 * 16 * 16, 3), backend=be, seed=0)
    gstep = pc.CapturedStep(gmodel, pc.SGD(gmodel.parameters(), lr=0.01, momentum=0.9),
                            **options)

    def graph_epoch(steps=STEPS):
        for i in range(steps):
            sl = slice(i * BATCH, (i + 1) * BATCH)
            gstep(xh[sl], yh[sl])
        return gstep.read()

    return images_per_s(graph_epoch)


graph_rows = {"CapturedStep fp32": graph_ips_for(),
              "CapturedStep unfused": graph_ips_for(fuse=False),
              "CapturedStep no graph": graph_ips_for(graph=False),
              "CapturedStep tf32": graph_ips_for(precision="tf32")}
print(f"\nshapes CNN training, batch {BATCH}, 3x64x64, SGD momentum 0.9, host batches copied each step")
print(f"  cupy backend, eager    {cupy_ips:10.0f} images/s   step breakdown (ms): {breakdown_ms}")
for label, ips in graph_rows.items():
    print(f"  {label:22} {ips:10.0f} images/s   / eager = {ips / cupy_ips:.2f}")
for flag, tag in ((False, "fp32"), (True, "tf32")):
    set_tf32(flag)
    tips = images_per_s(torch_epoch)
    best = graph_rows[f"CapturedStep {tag}"]
    print(f"  PyTorch + cuDNN {tag}   {tips:10.0f} images/s   eager/torch = {cupy_ips / tips:.2f},"
          f" CapturedStep {tag}/torch = {best / tips:.2f} (target >= 1.0)"
          + ("  [tf32: PyTorch's default for cuDNN convolutions]" if flag else ""))
PY
rc=$?
echo "benchmark exit status: $rc"
[ "$rc" -eq 0 ] || status=1

if [ "$POLYCNN_BENCH_TIMEOUT" != "0" ]; then
    section "3. polycnn bench --backends cupy --quick (timeout ${POLYCNN_BENCH_TIMEOUT}s)"
    timeout "$POLYCNN_BENCH_TIMEOUT" "$PY" -c 'from polycnn.cli.main import main; main()' \
        bench --backends cupy --quick --no-torch --no-startup
    rc=$?
    echo "polycnn bench exit status: $rc"
fi

section "done: overall status $status"
exit "$status"
