import pytest

from deploytool.errors import UsageError
from deploytool.tensors import TensorSpec, parse_input_spec, parse_inputs_json


def test_parse_full_spec():
    assert parse_input_spec("x:1x3x224x224:float32") == TensorSpec("x", (1, 3, 224, 224), "float32")


def test_dtype_defaults_to_float32_and_scalars_have_no_shape():
    assert parse_input_spec("x:4x8") == TensorSpec("x", (4, 8), "float32")
    assert parse_input_spec("n::int64") == TensorSpec("n", (), "int64")


def test_names_may_contain_colons():
    assert parse_input_spec("in:put:2x2:int32").name == "in:put"


@pytest.mark.parametrize("text, message", [
    ("x", "malformed input spec"),
    ("x:1xa:float32", "malformed shape"),
    ("x:1x0:float32", "dimension <= 0"),
    ("x:1x2:float31", "unknown dtype 'float31'"),
    (":1x2:float32", "has no name"),
])
def test_malformed_specs_say_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=message):
        parse_input_spec(text)


def test_inputs_json_round_trip():
    specs = [TensorSpec("a", (1, 2)), TensorSpec("b", (3,), "int64")]
    import json

    assert parse_inputs_json(json.dumps([s.to_dict() for s in specs])) == specs


@pytest.mark.parametrize("text", ["not json", "[]", '[{"shape": [1]}]', '{"name": "x"}'])
def test_bad_inputs_json(text):
    with pytest.raises(UsageError):
        parse_inputs_json(text)


def test_spec_prints_in_cli_syntax():
    spec = TensorSpec("x", (1, 512), "float32")
    assert parse_input_spec(str(spec)) == spec
