"""Property tests: the schema loader returns a Schema or raises SchemaError, nothing else.

Schema documents are built from plausible keys with arbitrary JSON-ish values (wrong
types, NaN and infinities, huge integers, booleans where numbers belong, nested objects),
written as JSON or YAML, plus raw bytes. A schema that loads survives a round trip through
its own file. Derandomized so every CI run tries the same examples.
"""

import itertools
import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.data.schema import Schema, load_schema, schema_from_dict, write_schema
from driftloop.errors import SchemaError

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
_files = itertools.count()

texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=6)
scalars = st.one_of(
    st.none(), st.booleans(), texts, st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, anything)


names = _maybe(st.sampled_from(["a", "b", "id", "label", "ts"]))
columns = st.fixed_dictionaries(
    {"name": names, "kind": _maybe(st.sampled_from(["numeric", "categorical", "text", "x"]))},
    optional={
        "dtype": _maybe(st.sampled_from(["float", "int", "string", "bool"])),
        "required": _maybe(st.booleans()),
        "min": _maybe(st.floats(-10, 10) | st.integers(-10, 10)),
        "max": _maybe(st.floats(-10, 10) | st.integers(-10, 10)),
        "allowed": _maybe(st.lists(st.sampled_from(["a", "b", 1, 2, True, False, 1.5]),
                                   max_size=3)),
        "max_length": _maybe(st.integers(-2, 50)),
        "allow_infinite": _maybe(st.booleans()),
        "other": anything,
    },
)
# Columns that are valid on their own, so that some schemas load and round-trip.
sane_columns = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(["a", "b"]), "kind": st.just("numeric")},
                          optional={"dtype": st.sampled_from(["float", "int"]),
                                    "min": st.integers(-10, 0), "max": st.floats(0, 10),
                                    "required": st.booleans()}),
    st.fixed_dictionaries({"name": st.sampled_from(["c", "d"]), "kind": st.just("numeric"),
                           "allow_infinite": st.booleans()}),
    st.fixed_dictionaries({"name": st.sampled_from(["e", "f"]), "kind": st.just("categorical")},
                          optional={"allowed": st.lists(texts, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"name": st.just("g"), "kind": st.just("categorical"),
                           "dtype": st.just("bool"),
                           "allowed": st.lists(st.booleans(), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"name": st.just("h"), "kind": st.just("text")},
                          optional={"max_length": st.integers(1, 500)}),
)
schemas = st.fixed_dictionaries(
    {"columns": st.one_of(st.lists(sane_columns, min_size=1, max_size=3),
                          _maybe(st.lists(columns, max_size=3)))},
    optional={
        "name": anything,
        "id": names, "timestamp": names, "label": names,
        "labels": _maybe(st.lists(st.sampled_from(["yes", "no", 1, 1.0, True, "1"]), max_size=4)),
        "slice": names,
    },
)


def _loads_or_refuses(load, arg) -> Schema | None:
    try:
        schema = load(arg)
    except SchemaError as err:
        assert "\n" not in str(err)
        return None
    assert isinstance(schema, Schema)
    return schema


@PROPERTY
@given(raw=schemas | anything)
def test_schema_from_dict_returns_a_schema_or_raises_schema_error(raw):
    _loads_or_refuses(schema_from_dict, raw)


@PROPERTY
@given(raw=schemas, as_yaml=st.booleans())
def test_a_schema_file_loads_or_is_refused_and_round_trips(tmp_path, raw, as_yaml):
    path = tmp_path / f"{next(_files)}.{'yaml' if as_yaml else 'json'}"
    try:
        text = yaml.safe_dump(raw, allow_unicode=True) if as_yaml else json.dumps(raw)
    except (ValueError, yaml.YAMLError):
        return  # not representable in that format: nothing to load
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    schema = _loads_or_refuses(load_schema, path)
    if schema is not None:
        again = tmp_path / f"{next(_files)}.json"
        write_schema(schema, again)
        assert load_schema(again) == schema


@PROPERTY
@given(data=st.binary(max_size=64), as_yaml=st.booleans())
def test_any_bytes_as_a_schema_file_load_or_are_refused(tmp_path, data, as_yaml):
    path = tmp_path / f"{next(_files)}.{'yml' if as_yaml else 'json'}"
    path.write_bytes(data)
    _loads_or_refuses(load_schema, path)
