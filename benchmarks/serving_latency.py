"""Predictor latency and throughput against the raw model call, single-row requests.

Rows of one run, side by side:

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

    .venv/bin/python benchmarks/serving_latency.py [--requests 2000] [--rounds 20]

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
IN_PROCESS = "DriftloopModel.predict (in process)"
TARGET_MS = 1.0


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


def start_server(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
    """User + system CPU time of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def servers(model_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int,
                                               subprocess.Popen[bytes], int]]:
    """Start the predictor (container entry point) and the no-op server."""
    port, noop_port = free_port(), free_port()
    procs = [
        start_server(["-m", "driftloop.serving.predictor", "--model_dir", str(model_dir),
                      "--model_name", MODEL, "--host", "127.0.0.1", "--port", str(port)], port),
    ]
    try:
        procs.append(start_server([__file__, "--serve-noop", str(noop_port),
                                   "--model-dir", str(model_dir)], noop_port))
        yield procs[0], port, procs[1], noop_port
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


def make_payloads(n: int) -> tuple[list[dict[str, Any]], list[bytes], list[bytes]]:
    """Feature rows, V1 bodies and V2 bodies for ``n`` single-row requests."""
    frame = make_rows(n, np.random.default_rng(1), drifted=False)
    rows = [{"x0": r["x0"], "x1": r["x1"], "segment": r["segment"]}
            for r in frame.to_dict(orient="records")]
    v1 = [json.dumps({"instances": [r]}).encode() for r in rows]
    v2 = [json.dumps({"id": "b", "inputs": [
        {"name": "x0", "shape": [1], "datatype": "FP64", "data": [r["x0"]]},
        {"name": "x1", "shape": [1], "datatype": "FP64", "data": [r["x1"]]},
        {"name": "segment", "shape": [1], "datatype": "BYTES", "data": [r["segment"]]},
    ]}).encode() for r in rows]
    return rows, v1, v2


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
    raw = dict(rows)[RAW]["p50"]
    lines = [
        "# Predictor latency vs the raw model call (single-row requests)", "",
        f"Model: HistGradientBoosting (max_iter={args.max_iter}) on the sample schema "
        "(2 numeric + 1 categorical feature). Raw = the pipeline's `predict_proba` on a "
        "prebuilt one-row feature DataFrame, 1 OpenMP thread (what the predictor calls; it "
        "never calls `predict`). HTTP = 127.0.0.1, keep-alive, the predictor's container "
        "entry point (access log on).",
        "",
        f"Machine: {info['platform']}; {info['cpu']}; Python {info['python']}; "
        f"{info['packages']}; commit {info['commit']}.",
        f"Load average (1/5/15 min) before: {loads[0]}, after: {loads[1]} "
        "(the CPUs are shared with other jobs).",
        f"{args.requests} requests per scenario in {args.rounds} interleaved rounds.",
        "",
        "| scenario | n | p50 ms | p90 ms | p99 ms | mean ms | req/s "
        "| overhead p50 vs raw ms | CPU ms/req |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in rows:
        over = "n/a" if name == RAW or concurrent(name) else f"{r['p50'] - raw:+.2f}"
        lines.append(f"| {name} | {r['n']:.0f} | {r['p50']:.2f} | {r['p90']:.2f} | "
                     f"{r['p99']:.2f} | {r['mean']:.2f} | {r['rps']:.0f} | {over} | "
                     f"{r['cpu']:.2f} |")
    lines += [
        "", f"Target: p50 overhead over raw <= {TARGET_MS:g} ms (one client).",
        "With several clients a request also waits for the others (one request at a time), "
        "so those rows compare by req/s.",
        "CPU ms/req: CPU time per request of the serving process (HTTP rows: the server, all "
        "threads, from /proc; in-process rows: this process). Unlike wall time it hardly "
        "grows when other jobs hold the CPUs.", "",
        "## Where the in-process V1 time goes (p50 of each stage timed alone, µs)", "",
        "| stage | p50 µs |", "|---|--:|",
    ]
    lines += [f"| {name} | {us:.0f} |" for name, us in stages]
    lines += ["", *decomposition(dict(rows))]
    return "\n".join(lines) + "\n"


def decomposition(data: dict[str, dict[str, float]]) -> list[str]:
    """Split the one-client HTTP means into model, predictor code and HTTP stack."""
    raw = data[RAW]["mean"]
    lines = [
        "## Where the one-client HTTP time goes (means, ms)", "",
        "Inside predict() = the server's own wall time in `DriftloopModel.predict` "
        "(kserve's `request_predict_seconds`).", "",
        "| | V1 | V2 |", "|---|--:|--:|",
    ]
    cells: dict[str, list[str]] = {}
    for version in ("V1", "V2"):
        pred = data[f"predictor, HTTP {version}, 1 client"]
        noop = data[f"no-op model, HTTP {version}, 1 client"]
        for label, value in (
            ("client-observed latency", pred["mean"]),
            ("inside predict() in the server", pred["inside"]),
            ("- raw predict_proba (in process)", raw),
            ("- predictor code around it, in the server (inside - raw)", pred["inside"] - raw),
            ("- same, in process (DriftloopModel.predict - raw)",
             data[IN_PROCESS]["mean"] - raw),
            ("HTTP + uvicorn + FastAPI + kserve + client (client - inside)",
             pred["mean"] - pred["inside"]),
            ("- same with the no-op model", noop["mean"] - noop["inside"]),
        ):
            cells.setdefault(label, []).append(f"{value:.2f}")
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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.5 * len(names) + 2), sharey=True)
    ax1.barh(y + 0.2, [data[n]["p50"] for n in names], 0.4, label="p50")
    ax1.barh(y - 0.2, [data[n]["p99"] for n in names], 0.4, label="p99")
    ax1.axvline(raw, color="k", ls="--", lw=1, label=f"raw p50 ({raw:.2f} ms)")
    ax1.axvline(raw + TARGET_MS, color="r", ls=":", lw=1, label="raw p50 + 1 ms (target)")
    ax1.set_xscale("log")
    ax1.set_xlabel("latency, ms (log)")
    ax1.set_yticks(y, names)
    ax1.legend(fontsize=8)
    ax2.barh(y, [data[n]["rps"] for n in names], 0.6, color="tab:green")
    ax2.set_xlabel("throughput, req/s")
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
    stages = [("JSON decode (orjson, as kserve)", p50_us(orjson.loads, bodies)),
              ("parse + validate (parse_v1)", p50_us(lambda d: p.parse_v1(d, schema),
                                                     decoded))]
    build = getattr(model, "build_frame", None)
    if build is not None:
        frames = [build(c) for c, _ in parsed]
        stages.append(("build feature frame", p50_us(build, [c for c, _ in parsed])))
        stages.append(("predict_proba + argmax (predictor's call)",
                       p50_us(model.predict_frame, frames)))
        results = [model.predict_frame(f) for f in frames]
        stages.append(("metrics (histogram + counter)",
                       p50_us(lambda r: model.observe(*r), results)))
        stages.append(("V1 response dict",
                       p50_us(lambda x: model.v1_response(*x[0], x[1][1]),
                              list(zip(results, parsed, strict=True)))))
    stages.append(("whole DriftloopModel.predict", p50_us(model.predict, decoded)))
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-iter", type=int, default=TrainConfig().max_iter,
                        help="boosting iterations of the model (default: TrainConfig's)")
    parser.add_argument("--serve-noop", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=NAME, help="result file stem in benchmarks/results")
    args = parser.parse_args()
    if args.serve_noop is not None:
        serve_noop(args.serve_noop, args.model_dir)
        return

    from threadpoolctl import threadpool_limits

    from driftloop.serving.predictor import DriftloopModel

    loads = [load_avg(), ""]
    rows_in, v1, v2 = make_payloads(args.requests)
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        model_dir = train(Path(tmp), args.max_iter)
        model = DriftloopModel(MODEL, model_dir=model_dir)
        model.load()
        assert model.loaded is not None
        pipeline, schema = model.loaded.model, model.loaded.schema
        frames = [feature_frame(pd.DataFrame([r]), schema) for r in rows_in]
        decoded = [json.loads(b) for b in v1]
        c = args.clients
        scenarios: list[tuple[str, Callable[[slice], Run]]] = []
        with servers(model_dir) as (pred, port, noop, noop_port):
            def raw(s: slice) -> Run:
                with threadpool_limits(limits=1, user_api="openmp"):
                    return in_process(pipeline.predict_proba, frames[s])

            def http(server: subprocess.Popen[bytes], at: int, path: str, bodies: list[bytes],
                     clients: int) -> Callable[[slice], Run]:
                return lambda s: over_http(server, at, path, bodies[s], clients)

            scenarios = [
                (RAW, raw),
                (IN_PROCESS, lambda s: in_process(model.predict, decoded[s])),
                ("no-op model, HTTP V1, 1 client", http(noop, noop_port, V1_PATH, v1, 1)),
                ("no-op model, HTTP V2, 1 client", http(noop, noop_port, V2_PATH, v2, 1)),
                ("predictor, HTTP V1, 1 client", http(pred, port, V1_PATH, v1, 1)),
                ("predictor, HTTP V2, 1 client", http(pred, port, V2_PATH, v2, 1)),
                (f"predictor, HTTP V1, {c} clients", http(pred, port, V1_PATH, v1, c)),
                (f"predictor, HTTP V2, {c} clients", http(pred, port, V2_PATH, v2, c)),
            ]
            for _, run in scenarios:  # warm-up
                run(slice(0, 100))
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
    md = markdown(rows, stages, info, args, (loads[0], loads[1]))
    print("\n" + md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(md)
    raw_p50 = dict(rows)[RAW]["p50"]
    with (RESULTS / f"{args.out}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scenario", "n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "req_per_s",
                         "overhead_p50_vs_raw_ms", "cpu_ms_per_req", "cpus", "python",
                         "platform"])
        for name, r in rows:
            writer.writerow([name, int(r["n"]), f"{r['p50']:.3f}", f"{r['p90']:.3f}",
                             f"{r['p99']:.3f}", f"{r['mean']:.3f}", f"{r['rps']:.1f}",
                             "" if concurrent(name) else f"{r['p50'] - raw_p50:.3f}",
                             f"{r['cpu']:.3f}", os.cpu_count(), info["python"],
                             info["platform"]])
    plot(rows, RESULTS / f"{args.out}.png",
         f"Single-row predictor latency vs raw predict_proba — {info['cpu']}, "
         f"Python {info['python']}, load {loads[0]}")
    print(f"wrote {RESULTS / args.out}.{{md,csv,png}}")


if __name__ == "__main__":
    main()
