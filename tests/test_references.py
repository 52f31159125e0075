"""How model results are flattened and named: tensors, tuples, dicts, NamedTuples, Nones."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest

from deploytool.verify.references import flat_outputs, named_outputs

Pair = namedtuple("Pair", "logits aux")

CASES = [
    ("t", ["output"]),
    (("a", "b"), ["output0", "output1"]),
    (("a",), ["output"]),
    (Pair("a", None), ["logits"]),
    (OrderedDict(out="a", aux="b"), ["out", "aux"]),
    ({"out": "a", "aux": None}, ["out"]),
    (("a", ("b", "c")), ["output0", "output1_0", "output1_1"]),
    (Pair(("a", "b"), {"k": "c"}), ["logits_0", "logits_1", "aux_k"]),
]


@pytest.mark.parametrize(("result", "names"), CASES, ids=[repr(c[0]) for c in CASES])
def test_named_outputs(result, names):
    assert [name for name, _ in named_outputs(result)] == names
    assert len(flat_outputs(result)) == len(names)
    assert None not in flat_outputs(result)
