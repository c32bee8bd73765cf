import json
from pathlib import Path

import pytest

from driftloop.errors import SchemaError
from driftloop.sample import sample_schema
from driftloop.schema import load_schema, schema_from_dict, write_schema


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
