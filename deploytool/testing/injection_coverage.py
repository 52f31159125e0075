"""Inject each fault of :data:`FAULTS` into zoo models; write which validation caught and where
``--localize`` put it.

``python -m deploytool.testing.injection_coverage [MODEL...] [--formats pt2,pt]`` saves each
model of :data:`deploytool.testing.zoo.PUBLIC_ZOO` (random weights as built), compiles it for
``cpu`` once as it is and once per fault with one middle layer's weights changed in the build
only (see inject.py), validates each package and runs ``--localize`` on each that fails. Each
model and format runs in its own process; outcomes go to a JSON file as they come (a second run
skips the rows it holds unless ``--again``), and the table to docs/injection-coverage.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .coverage import run_isolated, source_commit
from .inject import Fault, drop_bias, scale_weight, transpose_kernel

FAULTS: dict[str, Fault] = {"scale-1.001": scale_weight(1.001), "drop-bias": drop_bias,
                            "transpose": transpose_kernel}


def onnx_layers(proto, tensor: str) -> list[str]:
    """Names of the Conv, Gemm and MatMul nodes whose weight is an initializer (and, for
    ``bias``, whose bias, input 2, is one and not all zero), in graph order."""
    from onnx import numpy_helper

    values = {i.name: i for i in proto.graph.initializer}

    def changeable(name: str) -> bool:
        return name in values and bool(np.any(numpy_helper.to_array(values[name])))

    index = 1 if tensor == "weight" else 2
    return [n.name for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in values
            and len(n.input) > index and changeable(n.input[index])]


def program_layers(program, tensor: str) -> list[str]:
    """Module paths whose ``weight`` is a matrix or kernel (and, for ``bias``, whose bias is not
    all zero: a zero bias dropped changes nothing), in the program's parameter order."""
    state = program.state_dict
    layered = [n[:-len(".weight")] for n in state if n.endswith(".weight") and state[n].ndim >= 2]
    if tensor == "weight":
        return layered
    return [m for m in layered if f"{m}.bias" in state and bool(state[f"{m}.bias"].any())]


def middle(layers: list[str]) -> str | None:
    return layers[len(layers) // 2] if layers else None


def inject_one(name: str, fmt: str, folder: Path) -> dict:
    """The row of zoo model ``name`` saved as ``fmt``: the clean package's validation result,
    and for each fault the layer changed, whether validation failed and what --localize named."""
    from .zoo import build_zoo_model, save_exported, save_zoo_torchscript

    folder.mkdir(parents=True, exist_ok=True)
    model, inputs = build_zoo_model(name)
    path = folder / f"{name}.{fmt}"
    if fmt == "pt2":
        save_exported(model, inputs, path)
    else:
        save_zoo_torchscript(name, model, inputs, path)
    start = time.perf_counter()
    clean = _compile(path, folder / f"{name}-{fmt}-clean")
    row: dict = {"model": name, "format": fmt, "clean": clean}
    if clean.get("error") is None:
        row["faults"] = {fault: _inject(path, folder, fault, clean) for fault in FAULTS}
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _compile(path: Path, output: Path) -> dict:
    """Compile and validate ``path``; the outcome and what the package's layers are."""
    import onnx

    from ..common import last_line
    from ..compiler import CompileOptions, compile_model
    from ..errors import DeploytoolError
    from ..frontends.load import load_model, to_onnx

    try:
        package = compile_model(CompileOptions(model=path, output=output, force=True,
                                               java=False, allow_mismatch=True))
    except DeploytoolError as err:
        return {"error": last_line(str(err), limit=300)}
    validation = package.manifest["validation"] or {}
    outcome = {"package": str(output), "result": validation.get("result"),
               "status": validation.get("status"), "route": package.manifest["model"]["route"],
               "scaled_error": max((c["scaled_error"] for c in validation.get("comparisons", [])),
                                   default=None)}
    if (output / "model.onnx").is_file():
        proto = onnx.load(str(output / "model.onnx"))
        outcome["layers"] = {t: middle(onnx_layers(proto, t)) for t in ("weight", "bias")}
    elif path.suffix == ".pt2":
        program = to_onnx(load_model(path)).program
        outcome["layers"] = {t: middle(program_layers(program, t)) for t in ("weight", "bias")}
    return outcome


def _inject(path: Path, folder: Path, fault_name: str, clean: dict) -> dict:
    """Compile ``path`` with ``fault_name`` in the clean package's middle layer, then localize."""
    import pytest

    from ..common import last_line
    from ..errors import DeploytoolError
    from ..package.manifest import load_package
    from ..verify.localize import localize_package
    from ..verify.validate import ValidationOptions, localize_options, validate_package
    from .inject import injected

    fault = FAULTS[fault_name]
    layer = (clean.get("layers") or {}).get(fault.tensor)
    if layer is None:
        return {"layer": None}
    output = folder / f"{path.stem}-{path.suffix[1:]}-{fault_name}"
    result: dict = {"layer": layer}
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch, injected(patch, fault, layer):
        outcome = _compile(path, output)
        result.update(status=outcome.get("status"), result=outcome.get("result"),
                      scaled_error=outcome.get("scaled_error"), error=outcome.get("error"))
        if outcome.get("status") == "failed":
            try:
                package = load_package(output)
                options = localize_options(validate_package(package), ValidationOptions())
                found = localize_package(package, options, log=lambda _line: None)
            except DeploytoolError as err:
                result["localize_error"] = last_line(str(err), limit=300)
            else:
                result.update(node=found.node, op=found.op, module=found.module,
                              weights=found.weights, tensor=found.tensor, builds=found.builds,
                              localized=_names_layer(found, layer, fault.tensor))
    result["effect"] = exact_effect(Path(clean["package"]), path, fault, layer)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def exact_effect(package_dir: Path, path: Path, fault: Fault, layer: str) -> float:
    """How far ``fault`` in ``layer`` moves the model's outputs when the model itself computes
    it (ONNX Runtime on the package's model.onnx, or the torch.export program eagerly): the
    largest scaled difference from the unchanged model over the validation's samples."""
    import copy

    import onnx

    from ..frontends.exported import run_exported
    from ..frontends.load import load_model, to_onnx
    from ..package.manifest import load_package
    from ..verify.comparison import compare
    from ..verify.inputs import make_inputs
    from ..verify.references import onnxruntime_session

    package = load_package(package_dir)
    ranges = {k: tuple(v) for k, v in package.manifest.get("input_ranges", {}).items()}
    samples = [make_inputs(package.inputs, seed, {}, {}, ranges) for seed in range(3)]
    if (package_dir / "model.onnx").is_file():
        proto = onnx.load(str(package_dir / "model.onnx"))
        changed = copy.deepcopy(proto)
        fault(changed, layer)
        runs = []
        for model in (proto, changed):
            session = onnxruntime_session(model.SerializeToString())
            names = [i.name for i in session.get_inputs()]
            runs.append([session.run(None, dict(zip(names, a, strict=True))) for a in samples])
    else:
        program = to_onnx(load_model(path)).program
        clean = [run_exported(program, a) for a in samples]
        with fault.swapped(program, layer):
            runs = [clean, [run_exported(program, a) for a in samples]]
    return max(compare("", "", np.asarray(b), np.asarray(a)).scaled_error
               for before, after in zip(*runs, strict=True)
               for a, b in zip(before, after, strict=True))


def _names_layer(found, layer: str, tensor: str) -> bool:
    """Whether the localized node is the injected layer: the ONNX node of that name, or a
    torch.export node that reads the changed parameter."""
    if found.module is None:
        return found.node == layer
    return f"{layer}.{tensor}" in found.weights


def _run_isolated(name: str, fmt: str, folder: Path, timeout: int) -> dict:
    outcome = run_isolated("deploytool.testing.injection_coverage", name, fmt, folder, timeout)
    if isinstance(outcome, dict):
        return outcome
    return {"model": name, "format": fmt, "clean": {"error": outcome[1]}}


def _below_rounding(entry: dict, clean: dict) -> bool:
    """Whether a fault moves the model's own output by no more than validation lets a correct
    package differ (EXACT_FACTOR times the clean package's error, at least EXACT_FLOOR): no
    comparison of outputs can tell it from rounding."""
    from ..verify.validate import EXACT_FACTOR, EXACT_FLOOR

    effect = entry.get("effect")
    return effect is not None and effect <= max(EXACT_FLOOR,
                                                EXACT_FACTOR * (clean.get("scaled_error") or 0))


def _cell(entry: dict | None, clean: dict) -> str:
    if entry is None:
        return "not run"
    if entry.get("layer") is None:
        return "no layer to change"
    if entry.get("error"):
        return "compile failed"
    if entry.get("status") != "failed":
        if _below_rounding(entry, clean):
            return f"below rounding: moves the output by {entry['effect']:.2g} ({entry['result']})"
        return f"**missed** ({entry.get('result')})"
    if "localized" not in entry:
        return "caught, localize failed"
    where = "localised" if entry["localized"] else "**localised elsewhere**"
    return f"caught, {where} ({entry['builds']} builds)"


def _clean_cell(clean: dict) -> str:
    if clean.get("error"):
        return f"fails: {clean['error'][:80]}"
    return str(clean.get("result"))


def write_table(rows: dict, path: Path, commit: str) -> None:
    """The table: one row per model and format, one column per fault; then the details."""
    entries = [f for row in rows.values() for f in (row.get("faults") or {}).values()
               if f.get("layer") is not None
               and (f.get("status") == "failed" or not _below_rounding(f, row["clean"]))]
    caught = sum(1 for f in entries if f.get("status") == "failed")
    localized = sum(1 for f in entries if f.get("localized"))
    lines = [
        "# Injection coverage",
        "",
        "Each model of the public zoo (`deploytool/testing/zoo.py`, random weights as built) "
        "compiled for `cpu` as it is, then once per fault with one middle layer changed in the "
        "build only (`deploytool/testing/inject.py`): its weight scaled by 1.001, its bias "
        "set to zero, its kernel transposed. Each faulty package is validated, and "
        "`--localize` runs on each that fails. On the ONNX route (`.pt`) the layer is a Conv, "
        "Gemm or MatMul node and localised means `--localize` named that node; on the "
        "torch.export route (`.pt2`) the layer is a module and localised means the node it "
        "named reads the changed parameter. \"No layer to change\" means no such layer has a "
        "bias that is not all zero (torchvision and Hugging Face initialise biases to zero; "
        "on the ONNX route batch norms folded into convolutions give them one). Written by "
        "`python -m deploytool.testing.injection_coverage`.",
        "",
        "A fault that moves the model's own output (ONNX Runtime or torch.export, unchanged "
        "but for the fault) by no more than validation lets a correct package differ is "
        "\"below rounding\": no comparison of outputs can see it, and it is not counted.",
        "",
        f"Caught {caught}/{len(entries)} faults, localised {localized}/{len(entries)}. "
        f"Generated {datetime.date.today().isoformat()} at commit {commit} on "
        f"{platform.machine()}, {os.cpu_count()} cores.",
        "",
        f"| model | format | clean package | {' | '.join(FAULTS)} |",
        f"| --- | --- | --- |{' --- |' * len(FAULTS)}",
    ]
    for row in rows.values():
        faults = row.get("faults") or {}
        cells = " | ".join(_cell(faults.get(f), row["clean"]) for f in FAULTS)
        lines.append(f"| {row['model']} | .{row['format']} | {_clean_cell(row['clean'])} | "
                     f"{cells} |")
    lines += ["", "## Layers changed and layers named", ""]
    for row in rows.values():
        for fault, entry in (row.get("faults") or {}).items():
            if entry.get("layer") is None:
                continue
            named = entry.get("module") if entry.get("module") is not None else None
            where = (f"{entry.get('op')} '{entry.get('node')}'"
                     + (f" in module '{named}'" if named is not None else ""))
            lines.append(f"- {row['model']}.{row['format']} {fault}: changed `{entry['layer']}`; "
                         f"output scaled error {entry.get('scaled_error') or 0:.3g}"
                         + (f" (the fault alone moves it by {entry['effect']:.3g})"
                            if entry.get("effect") is not None else "") + "; "
                         f"--localize named {where if entry.get('node') else '-'}"
                         + (f" ({entry['localize_error']})" if entry.get("localize_error")
                            else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from .zoo import PUBLIC_ZOO

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo model names [default: all public ones]")
    parser.add_argument("--formats", default="pt2,pt", help="pt2, pt or both [pt2,pt]")
    parser.add_argument("--work", type=Path, default=Path("artifacts/inject"),
                        help="model files, packages and results [artifacts/inject]")
    parser.add_argument("--table", type=Path, default=Path("docs/injection-coverage.md"))
    parser.add_argument("--again", action="store_true", help="rerun rows already recorded")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per model [3600]")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "FORMAT"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        row = inject_one(args.one[0], args.one[1], args.work / f"{args.one[0]}-{args.one[1]}")
        args.json.write_text(json.dumps(row, indent=2, default=str) + "\n")
        return 0
    names = args.models or list(PUBLIC_ZOO)
    unknown = [n for n in names if n not in PUBLIC_ZOO]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; use {', '.join(PUBLIC_ZOO)}")
    results = args.work / "results.json"
    rows = json.loads(results.read_text()) if results.is_file() else {}
    args.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        for fmt in (f for f in args.formats.split(",") if f):
            key = f"{name}.{fmt}"
            if key in rows and not args.again:
                continue
            rows[key] = _run_isolated(name, fmt, args.work, args.timeout)
            results.write_text(json.dumps(rows, indent=2, default=str) + "\n")
            faults, clean = rows[key].get("faults") or {}, rows[key].get("clean") or {}
            cells = " | ".join(_cell(faults.get(f), clean) for f in FAULTS)
            print(f"{key:28} {cells}", flush=True)
            write_table(rows, args.table, source_commit())
    write_table(rows, args.table, source_commit())
    print(f"table written to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
