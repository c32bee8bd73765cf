import json
from pathlib import Path

import pytest

from driftloop.data.schema import load_schema, schema_from_dict, write_schema
from driftloop.demo.sample import sample_schema
from driftloop.errors import SchemaError


def test_round_trip_through_a_file(tmp_path: Path):
    path = tmp_path / "schema.json"
    write_schema(sample_schema(), path)
    loaded = load_schema(path)
    assert loaded == sample_schema()
    assert loaded.model_kind == "tabular"
    assert loaded.names_of("categorical") == ["segment"]


def test_yaml_schema_and_text_kind(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ncolumns:\n  - {name: text, kind: text}\n")
    schema = load_schema(path)
    assert schema.model_kind == "text" and schema.column("text").dtype == "string"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"columns": [{"name": "a", "kind": "image"}]}, r"column 'a'\.kind: must be one of"),
        ({"columns": [{"name": "a", "kind": "numeric", "dtype": "string"}]},
         r"column 'a'\.dtype: a numeric column takes float, int"),
        ({"columns": [{"name": "a", "kind": "numeric", "min": 3, "max": 1}]}, "min 3 is greater"),
        ({"columns": [{"name": "id", "kind": "numeric"}]}, "id/timestamp/label columns"),
        ({"columns": []}, "columns: must be a non-empty list"),
        ({"columns": [{"name": "a", "kind": "text"}], "slice": "a"}, "must be a categorical"),
    ],
)
def test_bad_schema_names_file_field_and_rule(tmp_path: Path, raw, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaError, match=message) as err:
        load_schema(path)
    assert str(err.value).startswith(str(path))


def test_invalid_json_is_reported_with_the_file(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(SchemaError, match=r"bad\.json: not a valid schema file"):
        load_schema(path)


def test_schema_from_dict_rejects_duplicate_columns():
    with pytest.raises(SchemaError, match="duplicate column names"):
        col = {"name": "a", "kind": "text"}
        schema_from_dict({"columns": [col, dict(col)]})


# --- issue 18: the loader refuses what would make validation meaningless ---------------

NUM = {"name": "a", "kind": "numeric"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"columns": [NUM], "labels": ["yes", "no", "yes"]}, r"labels: duplicate labels \['yes'\]"),
        ({"columns": [NUM], "labels": ["1", 1]}, "labels: must hold values of one type"),
        ({"columns": [NUM], "id": "ts", "timestamp": "ts"},
         "timestamp: 'ts' is also the id column: they must differ"),
        ({"columns": [NUM], "label": "id"}, "label: 'id' is also the id column"),
        ({"columns": [NUM], "id": {"a": 1}}, r"id: must be a non-empty column name"),
        ({"columns": [dict(NUM, min=float("nan"))]}, r"column 'a'\.min: must be a finite number"),
        ({"columns": [dict(NUM, max=float("inf"))]}, r"column 'a'\.max: must be a finite number"),
        ({"columns": [dict(NUM, min=-float("inf"))]}, r"column 'a'\.min: must be a finite"),
        ({"columns": [dict(NUM, min=True)]}, r"column 'a'\.min: must be a finite number"),
        ({"columns": [dict(NUM, max=int("9" * 400))]}, r"column 'a'\.max: must be a finite"),
        ({"columns": [{"name": "t", "kind": "text", "max_length": -1}]},
         r"column 't'\.max_length: a positive integer"),
        ({"columns": [{"name": "t", "kind": "text", "max_length": True}]},
         r"column 't'\.max_length: a positive integer"),
        ({"columns": [{"name": "c", "kind": "categorical", "allowed": ["a", 1]}]},
         r"column 'c'\.allowed: must hold values of one type \(got number, string\)"),
        ({"columns": [{"name": "c", "kind": "categorical", "allowed": [True, "x"]}]},
         r"column 'c'\.allowed: must hold values of one type"),
        ({"columns": [{"name": "c", "kind": "categorical", "allowed": [["a"]]}]},
         r"column 'c'\.allowed: must hold strings, numbers or booleans"),
        ({"columns": [{"name": "c", "kind": "categorical", "dtype": "bool",
                       "allowed": ["yes"]}]}, r"column 'c'\.allowed: a bool column allows"),
        ({"columns": [dict(NUM, allow_infinite="yes")]},
         r"column 'a'\.allow_infinite: must be true or false"),
        ({"columns": [dict(NUM, dtype="int", allow_infinite=True)]},
         r"column 'a'\.allow_infinite: float columns only"),
    ],
)
def test_the_loader_refuses_rules_that_cannot_hold(tmp_path: Path, raw, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))  # NaN / Infinity as Python's json writes them
    with pytest.raises(SchemaError, match=message) as err:
        load_schema(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_yaml_keys_that_are_not_strings_are_named_not_a_crash(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("columns:\n  - {name: a, kind: text, 1: x, null: y}\n")
    with pytest.raises(SchemaError, match=r"unknown keys \['1', 'None'\]"):
        load_schema(path)


def test_a_byte_order_mark_and_huge_integers_in_the_file(tmp_path: Path):
    path = tmp_path / "s.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"columns": [NUM]}).encode())
    assert load_schema(path).feature_names == ["a"]
    path.write_text('{"columns": [{"name": "a", "kind": "numeric", "min": 1' + "0" * 5000 + "}]}")
    with pytest.raises(SchemaError, match="not a valid schema file"):
        load_schema(path)


def test_bool_allowed_values_and_allow_infinite_round_trip(tmp_path: Path):
    raw = {"columns": [{"name": "f", "kind": "categorical", "dtype": "bool",
                        "allowed": [True, False]},
                       dict(NUM, allow_infinite=True)],
           "labels": [True, False]}
    schema = schema_from_dict(raw)
    assert schema.column("f").allowed == ("true", "false")
    assert schema.labels == ("true", "false")
    assert schema.column("a").allow_infinite
    path = tmp_path / "s.json"
    write_schema(schema, path)
    assert json.loads(path.read_text())["columns"][0]["allowed"] == [True, False]
    assert load_schema(path) == schema
