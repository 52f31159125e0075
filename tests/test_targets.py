import json
import platform
from dataclasses import replace

import pytest

from deploytool import targets
from deploytool.errors import DeploytoolError
from deploytool.targets import ARM_FLAGS, X86_FLAGS, list_targets, load_target, machine_cpu_flags


def test_every_target_file_builds_a_tvm_target():
    names = {t.name for t in list_targets()}
    assert {"cpu", "x86_64-avx2", "x86_64-avx512"} <= names
    for spec in list_targets():
        if spec.target.get("arch") == "native":  # 'cuda': this machine's GPU, an error without one
            spec = replace(spec, target={**spec.target, "arch": "sm_80"})
        assert spec.resolved().tvm_target() is not None


def test_cpu_resolves_to_this_machine():
    import tvm

    spec = load_target("cpu").resolved()
    assert spec.cpu == tvm.target.codegen.llvm_get_system_cpu()
    assert spec.cpu != "native"
    assert spec.runs_here()


def test_cpu_takes_every_instruction_set_this_machine_lists():
    spec = load_target("cpu").resolved()
    known = X86_FLAGS if platform.machine() == "x86_64" else ARM_FLAGS
    listed = {flag for flag in known.values() if flag in machine_cpu_flags()}
    assert listed <= set(spec.cpu_features())


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 feature names")
def test_a_cpu_model_older_than_its_flags_gets_the_missing_features(monkeypatch):
    # a virtual machine's Xeon with AMX whose CPU model LLVM names rocketlake
    monkeypatch.setattr(targets, "machine_cpu_flags",
                        lambda: {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                                 "amx_bf16"})
    monkeypatch.setattr(targets, "amx_granted", lambda flags: True)
    extra = targets._features_beyond({"kind": "llvm", "mcpu": "rocketlake"})
    assert extra == ["+avx512bf16", "+amx-tile", "+amx-bf16"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 feature names")
def test_amx_is_left_out_where_linux_does_not_grant_it(monkeypatch):
    """Linux before 5.16 lists the AMX flags but faults on the first tile instruction."""
    monkeypatch.setattr(targets, "machine_cpu_flags",
                        lambda: {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    monkeypatch.setattr(targets, "amx_granted", lambda flags: False)
    assert targets._features_beyond({"kind": "llvm", "mcpu": "rocketlake"}) == ["+avx512bf16"]
    named = targets._features_beyond({"kind": "llvm", "mcpu": "sapphirerapids"})
    assert named == ["-amx-tile", "-amx-bf16", "-amx-int8"]


def test_cpu_features_follow_the_cpu_model():
    avx2 = set(load_target("x86_64-avx2").cpu_features())
    avx512 = set(load_target("x86_64-avx512").cpu_features())
    assert {"avx2", "fma"} <= avx2 and "avx512f" not in avx2
    assert {"avx2", "avx512f", "avx512bw"} <= avx512


def test_runs_here_matches_proc_cpuinfo():
    spec = load_target("x86_64-avx512")
    assert spec.runs_here() == (platform.machine() == "x86_64"
                                and set(spec.cpu_features()) <= machine_cpu_flags())


def test_target_from_path_and_inline_json(tmp_path):
    data = {"target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
            "description": "mine"}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    assert load_target(str(path)).name == "mine"
    inline = load_target(json.dumps(data))
    assert inline.target["mcpu"] == "haswell" and inline.arch == "x86_64"


@pytest.mark.parametrize("spec, message", [
    ("no-such-target", "unknown target 'no-such-target'"),
    ("/nonexistent/t.json", "not found"),
    ("{not json", "not valid JSON"),
    ('{"target": {"mcpu": "x"}}', 'no "target" dict with a "kind"'),
    ('{"target": {"kind": "no-such-kind"}}', "not a valid TVM target"),
])
def test_bad_targets(spec, message):
    with pytest.raises(DeploytoolError, match=message):
        load_target(spec)
