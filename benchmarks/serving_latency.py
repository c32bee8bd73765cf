"""Predictor latency and throughput: compiled vs scikit-learn vs MLServer, one row and batches.

Rows of one run, side by side (the same model.joblib everywhere):

* ``compiled``: the predictor as it serves by default, the pipeline compiled to ONNX
  Runtime at load (:mod:`driftloop.serving.compiled`); ``sklearn``: the same predictor
  with ``DRIFTLOOP_COMPILE=0``; ``MLServer``: MLServer 1.7.1 + mlserver-sklearn (KServe's
  V2 sklearn runtime) from its own venv (``make mlserver``), V2 only (it has no V1).
* ``raw compiled predict_proba``: the compiled model's call alone on checked columns.
* batch rows: requests of 100 and 1,000 rows, one client.

* ``raw predict_proba``: the unpickled scikit-learn pipeline's ``predict_proba`` on a
  prebuilt one-row feature DataFrame (the frame :func:`driftloop.models.train.feature_frame`
  returns), in this process, under the one-thread OpenMP limit the predictor applies to
  small batches. It is the only model call the predictor makes per request (the class is
  the argmax of the probabilities; ``predict`` is never called).
* ``DriftloopModel.predict``: the predictor's whole per-request path in this process
  (already-decoded V1 dict in, response dict out; no HTTP).
* ``no-op model``: the same kserve/uvicorn server with a model that returns a constant
  answer: the floor that HTTP, kserve and the client cost without any predictor work.
* The predictor over HTTP (its container entry point, ``python -m
  driftloop.serving.predictor``, on 127.0.0.1), V1 and V2, one client and N concurrent
  clients (keep-alive ``http.client`` connections, one per thread).

"overhead" is a scenario's p50 minus the raw p50, for one client at a time. With N
clients a request also waits for the others (the predictor answers one at a time), so
those rows are compared by throughput. Scenarios alternate in rounds so that load from
other jobs on the machine hits all of them alike.

A second table splits the in-process V1 path into its stages (p50 of each, timed alone);
a third splits the one-client HTTP means into the time the server spent inside the model's
``predict()`` (kserve's ``request_predict_seconds`` histogram, read from ``/metrics``
between runs) and the rest (HTTP, uvicorn, FastAPI, kserve, the client), next to the same
split for the no-op model.

    .venv/bin/python benchmarks/serving_latency.py [--requests 2000] [--rounds 20] [--quick]
        [--mlserver .venvs/mlserver]

Prints the tables and the machine, writes benchmarks/results/serving_latency.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _mlserver  # benchmarks/_mlserver.py
import numpy as np
import pandas as pd

from driftloop.config import TrainConfig
from driftloop.demo.sample import make_rows, sample_schema, write_sample_store
from driftloop.models.train import feature_frame, save_model_artifact, train_model

MODEL = "sample"
NAME = "serving_latency"
RESULTS = Path(__file__).parent / "results"
V1_PATH = f"/v1/models/{MODEL}:predict"
V2_PATH = f"/v2/models/{MODEL}/infer"
RAW = "raw predict_proba (in process)"
RAW_COMPILED = "raw compiled predict_proba (in process)"
#: The issue's targets: model time in the server, end-to-end p50 (V1, one client), and the
#: ratio of requests/s to MLServer's.
MODEL_TARGET_MS, E2E_TARGET_MS, MLSERVER_RATIO = 0.2, 1.5, 5.0
IN_PROCESS = "DriftloopModel.predict (in process)"


# -- the model and its servers ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train(folder: Path, max_iter: int) -> Path:
    root = folder / "store"
    write_sample_store(root, days=1, rows_per_day=10, reference_rows=2000, seed=0)
    reference = pd.read_parquet(root / f"reference/{MODEL}/seed.parquet")
    result = train_model(reference, sample_schema(), TrainConfig(max_iter=max_iter),
                         model_name=MODEL)
    return save_model_artifact(result, folder / "model")


def start_server(args: list[str], port: int,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{args}: exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", f"/v1/models/{MODEL}")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{args}: not ready after 60 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children (MLServer's worker)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if stat.parent.name == str(pid) or fields[1] == str(pid):
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


Server = tuple[subprocess.Popen[bytes], int]


@contextlib.contextmanager
def servers(model_dir: Path) -> Iterator[tuple[Server, Server, Server]]:
    """Start the predictor compiled and with scikit-learn (container entry point), the no-op."""
    port, plain_port, noop_port = free_port(), free_port(), free_port()
    entry = ["-m", "driftloop.serving.predictor", "--model_dir", str(model_dir),
             "--model_name", MODEL, "--host", "127.0.0.1", "--port"]
    procs = [start_server([*entry, str(port)], port)]
    try:
        procs.append(start_server([*entry, str(plain_port)], plain_port,
                                  env={"DRIFTLOOP_COMPILE": "0"}))
        procs.append(start_server([__file__, "--serve-noop", str(noop_port),
                                   "--model-dir", str(model_dir)], noop_port))
        yield (procs[0], port), (procs[1], plain_port), (procs[2], noop_port)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)


def serve_noop(port: int, model_dir: Path) -> None:
    """Serve a model answering a constant V1/V2 response, like the predictor's entry point."""
    from driftloop.serving import clean_argv
    from driftloop.serving.server import run

    with clean_argv():
        from kserve.model import Model
        from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    meta = json.loads((model_dir / "metadata.json").read_text())
    version = str(meta.get("version") or "unknown")
    v1 = {"predictions": [{"class": "no", "probabilities": {"no": 0.75, "yes": 0.25},
                           "model_version": version}],
          "model_name": MODEL, "model_version": version}

    class Noop(Model):  # type: ignore[misc]
        def load(self) -> bool:
            self.ready = True
            return True

        def predict(self, payload: Any, headers: Any = None,
                    response_headers: Any = None) -> Any:
            if not isinstance(payload, InferRequest):
                return v1
            out_class = InferOutput("class", [1], "BYTES")
            out_class.set_data_from_numpy(np.asarray(["no"], dtype=object), binary_data=False)
            out_proba = InferOutput("probabilities", [1, 2], "FP64",
                                    parameters={"classes": '["no", "yes"]'})
            out_proba.set_data_from_numpy(np.asarray([[0.75, 0.25]]), binary_data=False)
            return InferResponse(response_id=payload.id or "x", model_name=MODEL,
                                 model_version=version, infer_outputs=[out_class, out_proba])

    run([Noop(MODEL)], host="127.0.0.1", port=port)


# -- payloads and measurements ----------------------------------------------------------


def feature_rows(n: int, seed: int = 1) -> list[dict[str, Any]]:
    frame = make_rows(n, np.random.default_rng(seed), drifted=False)
    return [{"x0": r["x0"], "x1": r["x1"], "segment": r["segment"]}
            for r in frame.to_dict(orient="records")]


def v1_body(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"instances": rows}).encode()


def v2_body(rows: list[dict[str, Any]]) -> bytes:
    n = len(rows)
    return json.dumps({"id": "b", "inputs": [
        {"name": "x0", "shape": [n], "datatype": "FP64", "data": [r["x0"] for r in rows]},
        {"name": "x1", "shape": [n], "datatype": "FP64", "data": [r["x1"] for r in rows]},
        {"name": "segment", "shape": [n], "datatype": "BYTES",
         "data": [r["segment"] for r in rows]},
    ]}).encode()


def make_payloads(n: int) -> tuple[list[dict[str, Any]], list[bytes], list[bytes]]:
    """Feature rows, V1 bodies and V2 bodies for ``n`` single-row requests."""
    rows = feature_rows(n)
    return rows, [v1_body([r]) for r in rows], [v2_body([r]) for r in rows]


def batch_bodies(size: int, n: int, make: Callable[[list[dict[str, Any]]], bytes]
                 ) -> list[bytes]:
    """``n`` request bodies of ``size`` rows each (other rows than the single-row ones)."""
    rows = feature_rows(size * min(n, 20), seed=2)
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    return [make(chunks[i % len(chunks)]) for i in range(n)]


def _client(port: int, path: str, payloads: list[bytes], out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for body in payloads:
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: HTTP {response.status}")
        out.append(time.perf_counter() - start)
    conn.close()


#: Latencies (s), wall time (s), CPU time (s), time inside the model's predict() (s; HTTP).
Run = tuple[list[float], float, float, float]


def predict_seconds(port: int) -> float:
    """Total seconds the server spent in model.predict (kserve's request_predict_seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("request_predict_seconds_sum"))


def over_http(server: subprocess.Popen[bytes], port: int, path: str, payloads: list[bytes],
              clients: int) -> Run:
    """Latencies, wall time and the server's CPU time for ``payloads`` from ``clients``."""
    results: list[list[float]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=_client, args=(port, path, payloads[i::clients], r))
               for i, r in enumerate(results)]
    inside = predict_seconds(port)
    cpu = cpu_seconds(server.pid)
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = cpu_seconds(server.pid) - cpu
    return [x for r in results for x in r], wall, cpu, predict_seconds(port) - inside


def in_process(call: Callable[[Any], Any], items: list[Any]) -> Run:
    lat = []
    cpu = time.process_time()
    start = time.perf_counter()
    for item in items:
        t0 = time.perf_counter()
        call(item)
        lat.append(time.perf_counter() - t0)
    return lat, time.perf_counter() - start, time.process_time() - cpu, math.nan


def summary(lat_s: list[float], wall_s: float, cpu_s: float,
            inside_s: float) -> dict[str, float]:
    lat = np.asarray(lat_s) * 1000
    return {"n": float(len(lat)), "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99)),
            "mean": float(lat.mean()), "rps": len(lat) / wall_s,
            "cpu": cpu_s * 1000 / len(lat), "inside": inside_s * 1000 / len(lat)}


def p50_us(call: Callable[[Any], Any], items: list[Any], repeats: int = 3) -> float:
    for item in items[:50]:
        call(item)
    lat: list[float] = []
    for _ in range(repeats):
        lat += in_process(call, items)[0]
    return float(np.percentile(lat, 50)) * 1e6


# -- report -----------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    from importlib.metadata import version

    import sklearn

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip() or "?"
    return {
        "platform": platform.platform(),
        "cpu": f"{cpu}, {os.cpu_count()} CPUs ({usable} usable)",
        "python": platform.python_version(),
        "packages": (f"scikit-learn {sklearn.__version__}, kserve {version('kserve')}, "
                     f"uvicorn {version('uvicorn')}, pandas {pd.__version__}, "
                     f"numpy {np.__version__}"),
        "commit": commit,
    }


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def concurrent(name: str) -> bool:
    return name.endswith("clients")


def markdown(rows: list[tuple[str, dict[str, float]]], stages: list[tuple[str, float]],
             info: dict[str, str], args: argparse.Namespace, loads: tuple[str, str]) -> str:
    data = dict(rows)
    raw = data[RAW]["p50"]
    lines = [
        "# Predictor latency: compiled (ONNX Runtime) vs scikit-learn vs MLServer", "",
        f"Model: HistGradientBoosting (max_iter={args.max_iter}) on the sample schema "
        "(2 numeric + 1 categorical feature), one model.joblib for every server. Raw = the "
        "pipeline's `predict_proba` on a prebuilt one-row DataFrame, 1 OpenMP thread; raw "
        "compiled = the compiled model on checked columns. HTTP = 127.0.0.1, keep-alive, "
        "the predictor's container entry point (compiled by default; `sklearn` = "
        f"`DRIFTLOOP_COMPILE=0`). Peer: {info['peer']}, default settings plus "
        "OMP_NUM_THREADS=1 (as the predictor's small batches), V2 only.",
        "",
        f"Machine: {info['platform']}; {info['cpu']}; Python {info['python']}; "
        f"{info['packages']}; commit {info['commit']}.",
        f"**Taken under load**: load average (1/5/15 min) before {loads[0]}, after "
        f"{loads[1]} (2 CPUs shared with other jobs).",
        f"{args.requests} single-row requests per scenario in {args.rounds} interleaved "
        "rounds (batch scenarios: proportionally fewer requests).",
        "",
        "| scenario | n | p50 ms | p90 ms | p99 ms | mean ms | req/s "
        "| overhead p50 vs raw ms | CPU ms/req | inside predict() ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in rows:
        over = ("n/a" if name in (RAW, RAW_COMPILED) or concurrent(name) or "batch" in name
                or "MLServer" in name else f"{r['p50'] - raw:+.2f}")
        inside = "" if math.isnan(r["inside"]) or "MLServer" in name else f"{r['inside']:.3f}"
        lines.append(f"| {name} | {r['n']:.0f} | {r['p50']:.2f} | {r['p90']:.2f} | "
                     f"{r['p99']:.2f} | {r['mean']:.2f} | {r['rps']:.0f} | {over} | "
                     f"{r['cpu']:.2f} | {inside} |")
    lines += ["", *targets(data, args.clients), "",
              "CPU ms/req: CPU time per request of the serving process and its children "
              "(MLServer's worker), from /proc. inside predict() = the server's own time in "
              "`DriftloopModel.predict` (kserve's `request_predict_seconds`): parsing, the "
              "model, metrics and the response, not HTTP.", "",
              "## Where the in-process V1 time goes (p50 of each stage timed alone, µs)", "",
              "| stage | p50 µs |", "|---|--:|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in stages]
    lines += ["", *decomposition(data)]
    return "\n".join(lines) + "\n"


def targets(data: dict[str, dict[str, float]], clients: int) -> list[str]:
    """The issue's targets, each with the measured value and whether it is met."""
    def row(what: str, value: float, target: str, met: bool) -> str:
        return f"| {what} | {value:.3g} | {target} | {'yes' if met else '**no**'} |"

    fast = data["predictor compiled, HTTP V1, 1 client"]
    lines = ["## Targets", "", "| target | measured | bound | met |", "|---|--:|--:|---|",
             row("model time in the server, ms (raw compiled p50)", data[RAW_COMPILED]["p50"],
                 f"<= {MODEL_TARGET_MS}", data[RAW_COMPILED]["p50"] <= MODEL_TARGET_MS),
             row("stricter: the whole predict() in the server, ms (compiled V1, mean)",
                 fast["inside"],
                 f"<= {MODEL_TARGET_MS}", fast["inside"] <= MODEL_TARGET_MS),
             row("end-to-end p50 over HTTP V1, 1 client, ms", fast["p50"],
                 f"<= {E2E_TARGET_MS}", fast["p50"] <= E2E_TARGET_MS)]
    for label in ("1 client", f"{clients} clients"):
        peer = data.get(f"MLServer, HTTP V2, {label}")
        if peer is None:
            continue
        for version in ("V1", "V2"):
            ours = data[f"predictor compiled, HTTP {version}, {label}"]
            ratio = ours["rps"] / peer["rps"]
            lines.append(row(f"req/s compiled {version} / MLServer V2, {label}", ratio,
                             f">= {MLSERVER_RATIO:g}", ratio >= MLSERVER_RATIO))
            # Under load wall-clock req/s follows whoever holds the CPUs; CPU time per
            # request is what a dedicated CPU's req/s would be the inverse of.
            ratio = peer["cpu"] / ours["cpu"]
            lines.append(row(f"CPU ms/req MLServer V2 / compiled {version}, {label}", ratio,
                             f">= {MLSERVER_RATIO:g}", ratio >= MLSERVER_RATIO))
    for size in (100, 1000):
        for version in ("V1", "V2"):
            a = data.get(f"predictor compiled, HTTP {version}, batch {size}")
            b = data.get(f"predictor sklearn, HTTP {version}, batch {size}")
            if a and b:
                lines.append(row(f"batch {size} {version}: compiled p50 / sklearn p50",
                                 a["p50"] / b["p50"], "<= 1 (not slower)",
                                 a["p50"] <= b["p50"]))
    return lines


def decomposition(data: dict[str, dict[str, float]]) -> list[str]:
    """Split the one-client HTTP means into model, predictor code and HTTP stack."""
    raw = data[RAW_COMPILED]["mean"]
    lines = [
        "## Where the one-client HTTP time goes (compiled predictor, means, ms)", "",
        "| | V1 | V2 |", "|---|--:|--:|",
    ]
    cells: dict[str, list[str]] = {}
    for version in ("V1", "V2"):
        pred = data[f"predictor compiled, HTTP {version}, 1 client"]
        noop = data[f"no-op model, HTTP {version}, 1 client"]
        for label, value in (
            ("client-observed latency", pred["mean"]),
            ("inside predict() in the server", pred["inside"]),
            ("- raw compiled predict_proba (in process)", raw),
            ("- predictor code around it, in the server (inside - raw)", pred["inside"] - raw),
            ("HTTP + uvicorn + FastAPI + kserve + client (client - inside)",
             pred["mean"] - pred["inside"]),
            ("- same with the no-op model", noop["mean"] - noop["inside"]),
        ):
            cells.setdefault(label, []).append(f"{value:.3f}")
    lines += [f"| {label} | {' | '.join(values)} |" for label, values in cells.items()]
    return lines


def plot(rows: list[tuple[str, dict[str, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in rows][::-1]
    data = dict(rows)
    raw = data[RAW]["p50"]
    y = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 0.35 * len(names) + 2), sharey=True)
    ax1.barh(y + 0.2, [data[n]["p50"] for n in names], 0.4, label="p50")
    ax1.barh(y - 0.2, [data[n]["p99"] for n in names], 0.4, label="p99")
    ax1.axvline(raw, color="k", ls="--", lw=1, label=f"raw p50 ({raw:.2f} ms)")
    ax1.axvline(E2E_TARGET_MS, color="r", ls=":", lw=1,
                label=f"{E2E_TARGET_MS} ms (end-to-end target, V1, 1 client)")
    ax1.set_xscale("log")
    ax1.set_xlabel("latency, ms (log)")
    ax1.set_yticks(y, names)
    ax1.legend(fontsize=8)
    ax2.barh(y, [data[n]["rps"] for n in names], 0.6,
             color=["tab:orange" if "MLServer" in n else "tab:green" for n in names])
    ax2.set_xscale("log")
    ax2.set_xlabel("throughput, req/s (log; orange: MLServer)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------


def stage_times(model: Any, bodies: list[bytes]) -> list[tuple[str, float]]:
    """p50 of each stage of the in-process V1 path, each timed alone over ``bodies``."""
    import orjson

    from driftloop.serving import predictor_inputs as p

    decoded = [orjson.loads(b) for b in bodies]
    schema = model.loaded.schema
    parsed = [p.parse_v1(d, schema) for d in decoded]
    cols = [c for c, _ in parsed]
    compiled = model.compiled
    frames = [model.build_frame(c) for c in cols]
    results = [model.predict_frame(f) for f in frames]
    return [
        ("JSON decode (orjson, as kserve)", p50_us(orjson.loads, bodies)),
        ("parse + validate (parse_v1)", p50_us(lambda d: p.parse_v1(d, schema), decoded)),
        ("compiled: columns -> float64 matrix", p50_us(compiled.matrix, cols)),
        ("compiled: predict_proba (ONNX Runtime + link)", p50_us(compiled.predict_proba, cols)),
        ("sklearn: build feature frame", p50_us(model.build_frame, cols)),
        ("sklearn: predict_proba + argmax", p50_us(model.predict_frame, frames)),
        ("metrics (histogram + counter)", p50_us(lambda r: model.observe(*r), results)),
        ("V1 response dict", p50_us(lambda x: model.v1_response(*x[0], x[1][1]),
                                    list(zip(results, parsed, strict=True)))),
        ("whole DriftloopModel.predict (compiled)", p50_us(model.predict, decoded)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--quick", action="store_true",
                        help="400 requests per scenario in 4 rounds (make bench)")
    parser.add_argument("--mlserver", type=Path,
                        default=Path(__file__).resolve().parents[1] / ".venvs/mlserver",
                        help="venv with MLServer + mlserver-sklearn (make mlserver); rows "
                             "are left out when it is missing")
    parser.add_argument("--max-iter", type=int, default=TrainConfig().max_iter,
                        help="boosting iterations of the model (default: TrainConfig's)")
    parser.add_argument("--serve-noop", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=NAME, help="result file stem in benchmarks/results")
    args = parser.parse_args()
    if args.serve_noop is not None:
        serve_noop(args.serve_noop, args.model_dir)
        return
    if args.quick:
        args.requests, args.rounds = 400, 4

    from threadpoolctl import threadpool_limits

    from driftloop.serving.predictor import DriftloopModel
    from driftloop.serving.predictor_inputs import parse_v1

    loads = [load_avg(), ""]
    rows_in, v1, v2 = make_payloads(args.requests)
    batches = {size: max(args.requests // (size // 10), args.rounds) for size in (100, 1000)}
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        model_dir = train(Path(tmp), args.max_iter)
        model = DriftloopModel(MODEL, model_dir=model_dir)
        model.load()
        assert model.loaded is not None and model.compiled is not None, model.compile_report
        pipeline, schema, compiled = model.loaded.model, model.loaded.schema, model.compiled
        frames = [feature_frame(pd.DataFrame([r]), schema) for r in rows_in]
        columns = [parse_v1({"instances": [r]}, schema)[0] for r in rows_in]
        decoded = [json.loads(b) for b in v1]
        c = args.clients
        (pred, port), (plain, plain_port), (noop, noop_port) = stack.enter_context(
            servers(model_dir))
        peer: Server | None = None
        peer_name = "MLServer not installed"
        if (args.mlserver / "bin" / "mlserver").exists():
            peer = stack.enter_context(_mlserver.mlserver(args.mlserver, model_dir, Path(tmp)))
            peer_name = _mlserver.version(args.mlserver)
            check_peer(peer[1], pipeline, schema)

        def raw(s: slice) -> Run:
            with threadpool_limits(limits=1, user_api="openmp"):
                return in_process(pipeline.predict_proba, frames[s])

        def http(server: Server, path: str, bodies: list[bytes],
                 clients: int) -> Callable[[slice], Run]:
            return lambda s: over_http(server[0], server[1], path, bodies[s], clients)

        def batch(server: Server, path: str, bodies: list[bytes],
                  n: int) -> Callable[[slice], Run]:
            # Batch scenarios send fewer requests: scale the round's slice to their count.
            def go(s: slice) -> Run:
                lo, hi = (x * n // args.requests for x in (s.start, min(s.stop, args.requests)))
                return over_http(server[0], server[1], path, bodies[lo:max(hi, lo + 1)], 1)
            return go

        fast, sk, nop = (pred, port), (plain, plain_port), (noop, noop_port)
        scenarios: list[tuple[str, Callable[[slice], Run]]] = [
            (RAW, raw),
            (RAW_COMPILED, lambda s: in_process(compiled.predict_proba, columns[s])),
            (IN_PROCESS, lambda s: in_process(model.predict, decoded[s])),
            ("no-op model, HTTP V1, 1 client", http(nop, V1_PATH, v1, 1)),
            ("no-op model, HTTP V2, 1 client", http(nop, V2_PATH, v2, 1)),
        ]
        for label, server in (("compiled", fast), ("sklearn", sk)):
            scenarios += [
                (f"predictor {label}, HTTP V1, 1 client", http(server, V1_PATH, v1, 1)),
                (f"predictor {label}, HTTP V2, 1 client", http(server, V2_PATH, v2, 1)),
                (f"predictor {label}, HTTP V1, {c} clients", http(server, V1_PATH, v1, c)),
                (f"predictor {label}, HTTP V2, {c} clients", http(server, V2_PATH, v2, c)),
            ]
        peer_v2 = [_mlserver.body([r]) for r in rows_in]
        if peer is not None:
            scenarios += [("MLServer, HTTP V2, 1 client", http(peer, _mlserver.PATH, peer_v2, 1)),
                          (f"MLServer, HTTP V2, {c} clients",
                           http(peer, _mlserver.PATH, peer_v2, c))]
        for size, n in batches.items():
            for label, server in (("compiled", fast), ("sklearn", sk)):
                for version, path, make in (("V1", V1_PATH, v1_body), ("V2", V2_PATH, v2_body)):
                    scenarios.append((f"predictor {label}, HTTP {version}, batch {size}",
                                      batch(server, path, batch_bodies(size, n, make), n)))
            if peer is not None:
                scenarios.append((f"MLServer, HTTP V2, batch {size}", batch(
                    peer, _mlserver.PATH, batch_bodies(size, n, _mlserver.body), n)))
        for _, run in scenarios:  # warm-up
            run(slice(0, min(100, args.requests)))
        lat: dict[str, list[float]] = {n: [] for n, _ in scenarios}
        wall: dict[str, float] = dict.fromkeys(lat, 0.0)
        cpu: dict[str, float] = dict.fromkeys(lat, 0.0)
        inside: dict[str, float] = dict.fromkeys(lat, 0.0)
        step = -(-args.requests // args.rounds)
        for start in range(0, args.requests, step):
            for name, run in scenarios:
                got, seconds, cpu_s, inside_s = run(slice(start, start + step))
                lat[name] += got
                wall[name] += seconds
                cpu[name] += cpu_s
                inside[name] += inside_s
        with threadpool_limits(limits=1, user_api="openmp"):
            stages = stage_times(model, v1[:500])
        loads[1] = load_avg()

    rows = [(name, summary(lat[name], wall[name], cpu[name], inside[name]))
            for name, _ in scenarios]
    info = machine_info()
    info["peer"] = peer_name
    md = markdown(rows, stages, info, args, (loads[0], loads[1]))
    print("\n" + md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(md)
    raw_p50 = dict(rows)[RAW]["p50"]
    with (RESULTS / f"{args.out}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scenario", "n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "req_per_s",
                         "overhead_p50_vs_raw_ms", "cpu_ms_per_req", "inside_predict_ms",
                         "cpus", "python", "platform", "load_before", "load_after"])
        for name, r in rows:
            writer.writerow([name, int(r["n"]), f"{r['p50']:.3f}", f"{r['p90']:.3f}",
                             f"{r['p99']:.3f}", f"{r['mean']:.3f}", f"{r['rps']:.1f}",
                             "" if concurrent(name) else f"{r['p50'] - raw_p50:.3f}",
                             f"{r['cpu']:.3f}", f"{r['inside']:.3f}", os.cpu_count(),
                             info["python"], info["platform"], loads[0], loads[1]])
    plot(rows, RESULTS / f"{args.out}.png",
         f"Predictor latency: compiled vs scikit-learn vs MLServer — {info['cpu']}, "
         f"load {loads[0]} → {loads[1]}")
    print(f"wrote {RESULTS / args.out}.{{md,csv,png}}")


def check_peer(port: int, pipeline: Any, schema: Any) -> None:
    """MLServer must answer what the pipeline answers (same model, same rows)."""
    rows = feature_rows(20, seed=3)
    got = np.asarray(_mlserver.probabilities(port, rows))
    want = pipeline.predict_proba(feature_frame(pd.DataFrame(rows), schema)).ravel()
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-9):
        raise SystemExit("MLServer answers differ from the pipeline's predict_proba")


if __name__ == "__main__":
    main()
