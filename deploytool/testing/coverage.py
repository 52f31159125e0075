"""Compile the public zoo from TorchScript (.pt) and torch.export (.pt2); write the coverage table.

``python -m deploytool.testing.coverage`` (``make zoo``) compiles every model of
:data:`deploytool.testing.zoo.PUBLIC_ZOO` once per format, each in its own process (a crash or
a runaway compile stays one row of the table), records each outcome in a JSON file as it goes (a
second run skips the rows it holds unless ``--again``), and writes the table to
docs/models-coverage.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

FORMATS = ("pt", "pt2")


def compile_one(name: str, fmt: str, folder: Path, keep: bool = False) -> dict:
    """Build zoo model ``name``, save it as ``fmt``, compile it for cpu; returns the row. The
    model file and the package are deleted afterwards unless ``keep``."""
    import shutil

    import numpy as np

    from ..common import last_line
    from ..compiler import CompileOptions, compile_model
    from ..errors import DeploytoolError
    from .zoo import TRACED, build_zoo_model, save_exported, save_zoo_torchscript

    folder.mkdir(parents=True, exist_ok=True)
    row: dict = {"model": name, "format": fmt}
    start = time.perf_counter()
    model, inputs = build_zoo_model(name)
    path = folder / f"{name}.{fmt}"
    if fmt == "pt2":
        save_exported(model, inputs, path)
        row["saved"] = "torch.export"
    else:
        save_zoo_torchscript(name, model, inputs, path)
        row["saved"] = "traced" if name in TRACED else "scripted"
    lines: list[str] = []
    try:
        package = compile_model(CompileOptions(model=path, output=folder / f"{name}-{fmt}",
                                               force=True, java=False, allow_mismatch=True),
                                log=lines.append)
    except DeploytoolError as err:
        row.update(status="error", error=last_line(str(err), limit=400),
                   stage=_stage(lines))
    except Exception as err:  # a bug: keep the row, with the exception's type
        row.update(status="error", error=f"{type(err).__name__}: {last_line(err, limit=400)}",
                   stage=_stage(lines))
    else:
        manifest = package.manifest
        validation = manifest["validation"] or {}
        row.update(status=validation.get("status", "unknown"),
                   route=manifest["model"]["route"], notes=manifest["model"]["notes"],
                   inputs=[d["name"] for d in manifest["inputs"]],
                   outputs=[d["name"] for d in manifest["outputs"]],
                   references=validation.get("references", []),
                   stage_seconds=manifest["stage_seconds"])
        comparisons = validation.get("comparisons", [])
        if comparisons:
            worst = max(comparisons, key=lambda c: c["max_abs_error"])
            row["max_abs_error"] = worst["max_abs_error"]
        vectors = manifest.get("self_test") or {}
        scales = [float(np.abs(np.load(package.path / o["file"])).max())
                  for o in vectors.get("outputs", [])]
        row["output_scale"] = min(scales) if scales else None
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["peak_rss_mib"] = _peak_rss_mib()
    if not keep:
        path.unlink(missing_ok=True)
        shutil.rmtree(folder / f"{name}-{fmt}", ignore_errors=True)
    return row


def _peak_rss_mib() -> int:
    """The largest resident memory of this process or any child it waited for (the C++
    compiler, the package's runner), in MiB."""
    import resource

    return max(resource.getrusage(who).ru_maxrss for who in
               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) // 1024


def _compile_cell(row: dict | None) -> str:
    """How long a row's compile took before validation, and its peak memory."""
    if not row or "stage_seconds" not in row:
        return "-"
    seconds = sum(v for k, v in row["stage_seconds"].items() if k != "validate")
    peak = row.get("peak_rss_mib")
    return f"{seconds:.0f} s" + (f", {peak / 1024:.1f} GiB" if peak else "")


def _stage(lines: list[str]) -> str:
    """The stage a failed compile was in: the one after the last stage that finished."""
    order = ["load", "export", "import", "build", "package", "validate"]
    done = [s for s in order if any(line.strip().startswith(s + " ") for line in lines)]
    return order[min(len(done), len(order) - 1)]


def source_commit() -> str:
    """The short hash of the checkout deploytool runs from, for the tables that record it."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent)
    return proc.stdout.strip() or "unknown"


def run_isolated(module: str, name: str, fmt: str, folder: Path, timeout: int,
                 extra: tuple[str, ...] = ()) -> dict | tuple[str, str]:
    """``python -m <module> --one NAME FORMAT`` in a child process, so that a crash or a hang is
    one failed row: the row it wrote, or (``"timeout"`` or ``"crash"``, why there is none)."""
    result = folder / f"{name}-{fmt}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, "--one", name, fmt, "--work", str(folder),
               "--json", str(result), *extra]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout} s"
    if result.is_file():
        return json.loads(result.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return "crash", f"exit {proc.returncode}: {tail[0][:300]}"


def _run_isolated(name: str, fmt: str, folder: Path, timeout: int, keep: bool) -> dict:
    """compile_one in a child process (see :func:`run_isolated`)."""
    start = time.perf_counter()
    outcome = run_isolated("deploytool.testing.coverage", name, fmt, folder, timeout,
                           ("--keep",) if keep else ())
    if isinstance(outcome, dict):
        return outcome
    stage, error = outcome
    seconds = timeout if stage == "timeout" else round(time.perf_counter() - start, 1)
    return {"model": name, "format": fmt, "status": "error", "stage": stage, "error": error,
            "seconds": seconds}


def _cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row["status"] == "passed":
        route = row.get("route", "")
        via = " (re-traced)" if "torchscript -> torch.export" in route else ""
        return f"passed{via}"
    if row["status"] == "failed":
        scale = row.get("output_scale")
        tiny = " (outputs tiny)" if scale is not None and scale < 1e-3 else ""
        return f"validation failed, max error {row.get('max_abs_error', 0):.2g}{tiny}"
    return f"fails at {row.get('stage', '?')}"


def write_table(rows: dict, path: Path, names: list[str], family: bool = False) -> None:
    """Write the coverage table (one row per model, one column per format) and the details."""
    from .zoo import TRACED, TRACED_TWINS

    counted = {"pt": names, "pt2": [n for n in names if n not in TRACED_TWINS]}
    passed = {fmt: sum(1 for n in counted[fmt] if (rows.get(f"{n}.{fmt}") or {}).get("status")
                       == "passed") for fmt in FORMATS}
    title, which, target = (
        ("Model family coverage", "Each model of `FAMILY_ZOO` in `deploytool/testing/zoo.py`: "
         "members of the public zoo's families (torchvision, Hugging Face, timm) that no test "
         "builds, to check that the routes generalise", "make zoo-family") if family else
        ("Public model coverage", "Each model of the public zoo (`deploytool/testing/zoo.py`: "
         "torchvision, Hugging Face and timm architectures", "make zoo"))
    lines = [
        f"# {title}",
        "",
        f"{which}, built in code with random weights and small inputs, compiled for `cpu` "
        "from a TorchScript file (`.pt`: scripted, or traced where marked) and from a "
        "torch.export archive (`.pt2`), then validated by deploytool's own rule against the "
        f"original model (and ONNX Runtime on the ONNX route). Written by `{target}`.",
        "",
        f"Passed: {passed['pt']}/{len(counted['pt'])} from .pt, "
        f"{passed['pt2']}/{len(counted['pt2'])} from .pt2"
        + ("" if family else " (the `_traced` twins have no .pt2 row of their own)") + ". "
        f"Generated {datetime.date.today().isoformat()} at commit {source_commit()} on "
        f"{platform.machine()}, {os.cpu_count()} cores. Compile: the time of every stage before "
        "validation, untuned, and the peak resident memory of the process that compiled and "
        "validated it (model building included).",
        "",
        "| model | .pt | .pt route | .pt2 | outputs | compile .pt | compile .pt2 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        pt, pt2 = rows.get(f"{name}.pt"), rows.get(f"{name}.pt2")
        route = (pt or {}).get("route", "").replace("torchscript", "ts").replace(" -> relax", "")
        saved = "traced" if name in TRACED else "scripted"
        outputs = ", ".join((pt or pt2 or {}).get("outputs", []))
        pt2_cell = "(same as scripted)" if name in TRACED_TWINS else _cell(pt2)
        lines.append(f"| {name} | {_cell(pt)} | {saved}: {route or '-'} | {pt2_cell} | "
                     f"{outputs} | {_compile_cell(pt)} | {_compile_cell(pt2)} |")
    lines += ["", "## Failures and notes", ""]
    for name in names:
        for fmt in FORMATS:
            row = rows.get(f"{name}.{fmt}")
            if row is None:
                continue
            if row["status"] == "error":
                lines.append(f"- {name}.{fmt}: {row.get('stage')}: {row.get('error')}")
            elif row["status"] == "failed":
                lines.append(f"- {name}.{fmt}: validation failed, max abs error "
                             f"{row.get('max_abs_error', 0):.3g}, smallest output magnitude "
                             f"{row.get('output_scale') or 0:.3g}")
            for note in row.get("notes", []):
                lines.append(f"- {name}.{fmt} note: {note}")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    from .zoo import FAMILY_ZOO, PUBLIC_ZOO, TRACED_TWINS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo model names [default: all public ones]")
    parser.add_argument("--formats", default="pt,pt2", help="pt, pt2 or both [pt,pt2]")
    parser.add_argument("--work", type=Path, default=Path("artifacts/zoo"),
                        help="model files, packages and results [artifacts/zoo]")
    parser.add_argument("--table", type=Path, help="[docs/models-coverage.md, with --family "
                        "docs/models-family-coverage.md]")
    parser.add_argument("--family", action="store_true",
                        help="the family members the tests never build (zoo.FAMILY_ZOO)")
    parser.add_argument("--again", action="store_true", help="recompile rows already recorded")
    parser.add_argument("--keep", action="store_true", help="keep model files and packages")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per compile [1800]")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "FORMAT"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        row = compile_one(args.one[0], args.one[1], args.work, args.keep)
        args.json.write_text(json.dumps(row, indent=2, default=str) + "\n")
        return 0
    zoo = FAMILY_ZOO if args.family else PUBLIC_ZOO
    table = args.table or Path("docs") / ("models-family-coverage.md" if args.family
                                          else "models-coverage.md")
    names = args.models or list(zoo)
    unknown = [n for n in names if n not in zoo]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; use {', '.join(zoo)}")
    formats = [f for f in args.formats.split(",") if f]
    results = args.work / ("family-results.json" if args.family else "results.json")
    rows = json.loads(results.read_text()) if results.is_file() else {}
    args.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        for fmt in formats:
            if fmt == "pt2" and name in TRACED_TWINS:
                continue  # the same model as its scripted twin's .pt2
            key = f"{name}.{fmt}"
            if key in rows and not args.again:
                continue
            row = _run_isolated(name, fmt, args.work, args.timeout, args.keep)
            rows[key] = row
            results.write_text(json.dumps(rows, indent=2, default=str) + "\n")
            print(f"{key:28} {_cell(row):48} {row.get('seconds', 0):7.1f} s", flush=True)
    write_table(rows, table, list(zoo), family=args.family)
    print(f"table written to {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
