import json
import subprocess
import sys
from pathlib import Path

import pytest

from driftloop.cli import main
from driftloop.data.storage import open_store
from driftloop.models.registry import Registry


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_step():
    exe = Path(sys.executable).parent / "driftloop"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for step in ("ingest", "drift", "decide", "train", "evaluate", "run", "models", "demo"):
        assert step in out


@pytest.fixture()
def sample(tmp_path: Path, capsys):
    code, out, _ = _run(capsys, "sample", "--out", str(tmp_path / "s"), "--days", "2")
    assert code == 0
    info = json.loads(out)
    return Path(info["store"]), Path(info["schema"])


def test_ingest_writes_artifacts_and_json(sample, tmp_path: Path, capsys):
    store, schema = sample
    out_dir = str(tmp_path / "o")
    code, out, _ = _run(capsys, "ingest", "--store", str(store), "--schema", str(schema),
                        "--start", "2026-01-01", "--end", "2026-01-02", "--out", out_dir)
    report = json.loads(out)
    assert code == 0 and report["counts"]["quarantined"] == 3
    assert (tmp_path / "o" / "records.parquet").exists()
    assert (tmp_path / "o" / "quarantine.parquet").exists()


def test_bad_input_is_one_line_with_nonzero_exit(sample, tmp_path: Path, capsys):
    store, _ = sample
    bad = tmp_path / "bad.json"
    bad.write_text('{"columns": [{"name": "a", "kind": "image"}]}')
    code, out, err = _run(capsys, "ingest", "--store", str(store), "--schema", str(bad),
                          "--start", "2026-01-01", "--end", "2026-01-01")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "bad.json" in err and "kind" in err

    code, _, err = _run(capsys, "ingest", "--store", str(tmp_path / "missing"), "--schema",
                        str(bad), "--start", "2026-01-01", "--end", "2026-01-01")
    assert code == 2 and "does not exist" in err


def test_run_then_models_and_tamper_detection(sample, capsys):
    store, schema = sample
    code, out, err = _run(capsys, "run", "--store", str(store), "--schema", str(schema),
                          "--model", "sample", "--now", "2026-01-01", "--run-id", "r1")
    assert code == 0
    result = json.loads(out)
    assert result["retrain"] and result["verdict"] == "promote"
    assert "decide   retrain" in err

    code, out, _ = _run(capsys, "models", "list", "--store", str(store), "--model", "sample")
    listing = json.loads(out)
    assert listing["aliases"]["champion"] == result["champion"]

    key = f"models/sample/{result['champion']}/model.joblib"
    s = open_store(store)
    s.write_bytes(key, s.read_bytes(key) + b"x")
    code, _, err = _run(capsys, "models", "verify", result["champion"], "--store", str(store),
                        "--model", "sample")
    assert code == 3 and "sha256" in err.lower()
    assert Registry(s, "sample").champion() == result["champion"]


def test_an_all_quarantined_window_fails_loudly_and_still_writes_the_quarantine(tmp_path,
                                                                               capsys):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"name": "t", "labels": ["a", "b"],
                                  "columns": [{"name": "x", "kind": "numeric"}]}))
    day = tmp_path / "store" / "requests" / "dt=2026-01-01"
    day.mkdir(parents=True)
    (day / "a.jsonl").write_text("".join(
        json.dumps({"id": f"r{i}", "timestamp": "2026-01-01T01:00:00Z", "x": "high"}) + "\n"
        for i in range(3)))
    code, out, err = _run(capsys, "ingest", "--store", str(tmp_path / "store"), "--schema",
                          str(schema), "--start", "2026-01-01", "--end", "2026-01-01",
                          "--out", str(tmp_path / "o"))
    assert code != 0 and out == "" and err.count("\n") == 1
    assert "all 3 records" in err and "a.jsonl" in err
    import pandas as pd

    quarantined = pd.read_parquet(tmp_path / "o" / "quarantine.parquet")
    assert len(quarantined) == 3 and quarantined["_reason"].str.contains("x").all()
