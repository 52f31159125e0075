"""The public zoo's coverage table (make zoo): cells, counts and failure lines."""

from __future__ import annotations

from deploytool.testing.coverage import write_table
from deploytool.testing.zoo import PUBLIC_ZOO, TRACED


def test_table_rows_cells_and_failures(tmp_path):
    rows = {
        "tv_resnet18.pt": {"status": "passed", "route": "torchscript -> onnx -> relax",
                           "outputs": ["output"], "notes": [], "peak_rss_mib": 1536,
                           "stage_seconds": {"export": 2.0, "build": 10.4, "validate": 30.0}},
        "tv_resnet18.pt2": {"status": "passed", "route": "torch.export -> relax", "notes": []},
        "tv_swin.pt": {"status": "passed", "route": "torchscript -> torch.export -> relax",
                       "outputs": ["output"], "notes": ["re-traced: no ONNX form"]},
        "tv_swin.pt2": {"status": "error", "stage": "build", "error": "TVM could not build"},
        "tv_vit.pt": {"status": "failed", "max_abs_error": 0.5, "output_scale": 1e-6,
                      "notes": []},
    }
    table = tmp_path / "coverage.md"
    write_table(rows, table, ["tv_resnet18", "tv_swin", "tv_vit", "tv_swin_traced"])
    text = table.read_text()
    assert "Passed: 2/4 from .pt, 1/3 from .pt2" in text
    # compile time leaves validation out: 2.0 + 10.4 s
    assert ("| tv_resnet18 | passed | scripted: ts -> onnx | passed | output | 12 s, 1.5 GiB | - |"
            in text)
    assert ("| tv_swin | passed (re-traced) | scripted: ts -> torch.export | fails at build |"
            in text)
    assert "validation failed, max error 0.5 (outputs tiny)" in text
    assert "| tv_swin_traced | not run | traced: - | (same as scripted) |" in text
    assert "- tv_swin.pt2: build: TVM could not build" in text
    assert "- tv_swin.pt note: re-traced: no ONNX form" in text


def test_public_zoo_saves_hugging_face_models_traced():
    assert {"hf_bert", "hf_gpt2", "timm_resnet10t", "tv_swin_traced"} <= TRACED
    assert "tv_swin" in PUBLIC_ZOO and "tv_swin" not in TRACED


def test_family_zoo_is_apart_from_the_public_zoo_and_has_its_own_table(tmp_path):
    from deploytool.testing.zoo import FAMILY_ZOO, ZOO

    assert not set(FAMILY_ZOO) & set(PUBLIC_ZOO)  # members no test builds
    assert set(FAMILY_ZOO) <= set(ZOO) and {"hf_llama", "timm_deit_tiny"} <= TRACED
    rows = {"hf_llama.pt": {"status": "passed", "route": "torchscript -> torch.export -> relax",
                            "outputs": ["output"], "notes": []},
            "hf_llama.pt2": {"status": "passed", "route": "torch.export -> relax", "notes": []}}
    table = tmp_path / "family.md"
    write_table(rows, table, ["hf_llama"], family=True)
    text = table.read_text()
    assert text.startswith("# Model family coverage") and "make zoo-family" in text
    assert "Passed: 1/1 from .pt, 1/1 from .pt2." in text
    row = "| hf_llama | passed (re-traced) | traced: ts -> torch.export | passed | output |"
    assert row in text
