"""Tuning: records land in the database, compiles reuse them, Ctrl-C keeps them, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import relax_module

from deploytool.cli import main
from deploytool.errors import DeploytoolError
from deploytool.testing.examples import mlp
from deploytool.tuning.database import default_db_dir, open_database
from deploytool.tuning.search import parse_duration

REPO = Path(__file__).resolve().parent.parent


def _records(db: Path) -> list[dict]:
    path = db / "database_tuning_record.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def models(mlp_pt, cnn_pt):
    return {"mlp": mlp_pt, "cnn": cnn_pt}


def _compile(args: list[str]) -> tuple[int, str]:
    outcome = CliRunner().invoke(main, ["compile", *args])
    return outcome.exit_code, outcome.output


@pytest.fixture(scope="module")
def tuned(models, tmp_path_factory):
    """`compile --tune` of the MLP with 6 trials (2 per kernel) into a fresh database."""
    folder = tmp_path_factory.mktemp("tuning")
    code, output = _compile([str(models["mlp"]), "--tune", "--trials", "6", "--db",
                             str(folder / "db"), "-o", str(folder / "pkg")])
    assert code == 0, output
    return folder / "db", output, folder / "pkg"


def _run_package(package: Path, model_path: Path, tmp: Path) -> float:
    """Run the package's native runner on a seeded input; the largest error to TorchScript."""
    import torch

    manifest = json.loads((package / "manifest.json").read_text())
    spec = manifest["inputs"][0]
    x = np.random.default_rng(1).uniform(-1, 1, spec["shape"]).astype(np.float32)
    np.save(tmp / "x.npy", x)
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    subprocess.run([str(package / "bin" / "deploytool-run"), "--input", f"{spec['name']}=x.npy",
                    "--output-dir", str(out)], cwd=tmp, check=True, env={"PATH": "/usr/bin:/bin"},
                   capture_output=True)
    got = np.load(out / f"{manifest['outputs'][0]['name']}.npy")
    expected = torch.jit.load(str(model_path))(torch.from_numpy(x)).detach().numpy()
    return float(np.abs(got - expected).max())


@pytest.mark.slow
def test_tuning_writes_records_for_every_kernel(tuned):
    db, output, package = tuned
    records = _records(db)
    plan = json.loads((package / "manifest.json").read_text())["tuning"]
    # the searched trials, and the measured register-tiled schedules of the two Linear layers
    # whose outputs split into vectors (256 and 128; not the 2-wide one)
    assert plan["register_tiled_records"] == 2
    assert len(records) == plan["trials_run"] + 2 and plan["trials_run"] >= 6
    workloads = (db / "database_workload.json").read_text().splitlines()
    assert len(workloads) == 3  # three Linear layers, each fused with its bias (and ReLU)
    assert {record[0] for record in records} == {0, 1, 2}  # every kernel was measured
    # every kernel has records; where the search did not beat the register-tiled schedule by
    # SEARCH_MARGIN, the build keeps that one
    assert plan["from_database"] + plan["kept_default"] == plan["tasks"] == 3
    assert plan["from_database"] >= 1  # the 2-wide Linear layer has no register-tiled schedule
    assert "trials" in output and "best" in output and "GFLOP/s" in output  # progress, table


@pytest.mark.slow
def test_compile_reuses_the_database_and_still_matches_torchscript(tuned, models, tmp_path):
    db, _, _ = tuned
    before = len(_records(db))
    packages = []
    for name in ("a", "b"):
        code, output = _compile([str(models["mlp"]), "--db", str(db), "-o", str(tmp_path / name)])
        assert code == 0, output
        assert "/3 kernels tuned" in output
        packages.append(tmp_path / name)
    assert len(_records(db)) == before  # reuse: no new trials
    first, second = (json.loads((p / "manifest.json").read_text()) for p in packages)
    plan = first["tuning"]
    assert plan["from_database"] + plan["kept_default"] == 3
    assert plan["default"] == plan["kept_default"]  # no kernel without records
    if plan["kept_default"]:
        assert f"{plan['kept_default']} of them had records" in output
    assert first["files"]["model.so"] == second["files"]["model.so"]  # the same kernels
    assert _run_package(packages[0], models["mlp"], tmp_path) < 1e-5


@pytest.mark.slow
def test_untuned_compile_uses_default_schedules_and_matches(models, tmp_path):
    code, output = _compile([str(models["cnn"]), "--db", str(tmp_path / "none"),
                             "-o", str(tmp_path / "cnn")])
    assert code == 0, output
    plan = json.loads((tmp_path / "cnn" / "manifest.json").read_text())["tuning"]
    assert plan["from_database"] == 0 and plan["database"] is None
    assert plan["default"] >= 1 and plan["default"] + plan["unscheduled"] == plan["tasks"]
    assert _run_package(tmp_path / "cnn", models["cnn"], tmp_path) < 1e-5


@pytest.mark.slow
def test_a_small_model_is_tuned_with_a_warm_cache(tuned):
    """The MLP's weights (its parameters, counted here from torch) fit in cache."""
    import torch

    torch.manual_seed(0)
    model, _ = mlp()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    _, output, _ = tuned
    assert f"with a warm cache: the model has {size / 2**20:.1f} MiB of weights" in output


@pytest.mark.slow
def test_tuning_a_cnn_starts_from_the_register_tiled_schedules(models, tmp_path, monkeypatch):
    """Both convolutions and the max pooling get a measured record of the default schedule
    before the search; a
    compile from the database (validated against ONNX Runtime and TorchScript) still matches.
    Its trials run from a flushed cache, as a model with more weights than the cache would."""
    monkeypatch.setattr("deploytool.tuning.search.COLD_WEIGHT_BYTES", 0)
    db = tmp_path / "db"
    outcome = CliRunner().invoke(main, ["tune", str(models["cnn"]), "--trials", "6",
                                        "--db", str(db)])
    assert outcome.exit_code == 0, outcome.output
    assert "each trial runs from a flushed cache" in outcome.output
    assert "measured the default schedule (register-tiled or pooling) of 3 kernel(s)" \
        in outcome.output
    # each record holds its trial's fastest run, not all 10 (whose mean MetaSchedule would rank)
    records = [json.loads(line) for line in (db / "database_tuning_record.json").open()]
    assert records and all(len(run_secs) == 1 for _, (_, run_secs, *_) in records), records[0]
    code, output = _compile([str(models["cnn"]), "--db", str(db), "-o", str(tmp_path / "pkg")])
    assert code == 0, output
    plan = json.loads((tmp_path / "pkg" / "manifest.json").read_text())["tuning"]
    assert plan["from_database"] + plan["kept_default"] >= 3
    assert _run_package(tmp_path / "pkg", models["cnn"], tmp_path) < 1e-5


@pytest.mark.slow
def test_ctrl_c_keeps_a_usable_database(models, tmp_path):
    db = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "deploytool", "tune", str(models["mlp"]), "--trials", "90",
         "--db", str(db)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        records = db / "database_tuning_record.json"
        while time.monotonic() < deadline and process.poll() is None:
            if records.exists() and records.read_text().strip():
                break
            time.sleep(1)
        assert process.poll() is None, "tuning ended before it could be interrupted"
        # A thread that takes SIGINT would run whatever handler a library has installed at
        # that moment, and the Ctrl-C was lost under load: every thread must block it.
        assert _threads_taking_sigint(process.pid) == []
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopped: interrupted" in output, output[-3000:]
    kept = len(_records(db))
    assert 1 <= kept < 90
    code, output = _compile([str(models["mlp"]), "--db", str(db), "-o", str(tmp_path / "pkg")])
    assert code == 0, output
    tuned = json.loads((tmp_path / "pkg" / "manifest.json").read_text())["tuning"]
    assert tuned["from_database"] >= 1
    assert _run_package(tmp_path / "pkg", models["mlp"], tmp_path) < 1e-5


def _threads_taking_sigint(pid: int, samples: int = 5) -> list[str]:
    """The threads of ``pid`` that have SIGINT unblocked in every one of ``samples`` looks, 50 ms
    apart. The tuner's watcher unblocks it only while it waits in sigtimedwait, which it leaves
    and re-enters every 0.1 s: one look can catch it between its status and its wchan."""
    takers = None
    for _ in range(samples):
        found = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(FileNotFoundError):  # the thread ended
                status = (task / "status").read_text()
                blocked = int(next(line.split()[1] for line in status.splitlines()
                                   if line.startswith("SigBlk:")), 16)
                waiting = "sigtimedwait" in (task / "wchan").read_text()
                if not blocked & (1 << (signal.SIGINT - 1)) and not waiting:
                    found.add(task.name)
        takers = found if takers is None else takers & found
        time.sleep(0.05)
    return sorted(takers)


def test_the_cli_starts_no_thread_before_it_holds_ctrl_c():
    """numpy starts OpenBLAS's threads on import; imported by the CLI module, they existed before
    the tune command held Ctrl-C, and took the SIGINT meant for the tuner."""
    script = ("import os, sys, deploytool.cli; "
              "print(len(os.listdir('/proc/self/task')), 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.split() == ["1", "False"]


CTRL_C_SCRIPT = """
import ctypes, json, os, signal, time
from deploytool.tuning.interrupts import ctrl_c_stops_tuning, hold_ctrl_c

hold_ctrl_c()  # as deploytool's CLI does for tune and compile, before anything starts a thread
import torch  # starts threads: OpenBLAS's, PyTorch's pool
torch.ones(512, 512) @ torch.ones(512, 512)
libc = ctypes.CDLL(None)
libc.signal.restype = ctypes.c_void_p
libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
lines = []
before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the parent ignores Ctrl-C (CI)
with ctrl_c_stops_tuning(lines.append) as stop:
    with ctrl_c_stops_tuning(lines.append) as inner:
        nested = inner is stop
    libc.signal(signal.SIGINT, 1)  # a C library's own disposition (SIG_IGN), behind Python's back
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 10
    while stop.reason is None and time.monotonic() < deadline:
        time.sleep(0.01)
print(json.dumps({"reason": stop.reason, "lines": lines, "nested": nested,
                  "restored": signal.getsignal(signal.SIGINT) == before,
                  "blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])}))
"""


def test_ctrl_c_reaches_the_tuner_whatever_handler_a_library_installs():
    """Inside MetaSchedule's search, TVM installs a SIGINT handler of its own again and again; a
    Ctrl-C that came while it was in place was lost and the tuning ran to its end. Here a C
    library ignores SIGINT behind Python's back while threads run, and Ctrl-C must still stop
    the tuning (it did not with a handler alone)."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["reason"] == "interrupted"
    assert outcome["lines"] == ["interrupted: stopping after the current batch (Ctrl-C again to "
                                "abort); records measured so far are saved"]
    assert outcome["nested"]  # compile --tune enters it twice: one Ctrl-C handling
    assert outcome["restored"] and not outcome["blocked"]  # Ctrl-C is as it was before


def test_a_failed_tune_leaves_ctrl_c_working():
    """The CLI holds SIGINT for tune and compile; a command that fails early gives it back."""
    outcome = CliRunner().invoke(main, ["tune", "model.pt", "--target", "no-such-target"])
    assert outcome.exit_code == 1 and "no-such-target" in outcome.output
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def _first_linear_layer(model_path: Path):
    """(tuning target, the model's first fused Linear kernel, its module as tuning keys it)."""
    import tvm

    from deploytool.build.cpu_pipeline import fuse, prim_funcs
    from deploytool.schedules.metaschedule import tuning_target
    from deploytool.targets import load_target

    target = tuning_target(load_target("cpu"))
    fused = fuse(relax_module(model_path), target)
    func = next(f for gv, f in prim_funcs(fused) if gv.name_hint.startswith("fused_matmul"))
    return target, func, tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def test_a_searched_schedule_must_beat_the_register_tiled_one_by_a_margin(models, tmp_path):
    """Records made here: the MLP's first Linear layer, its register-tiled schedule measured at
    100 us, then searched schedules (traces that sample) at 80 us and 70 us."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from deploytool.schedules.cpu import accumulator_lanes, register_tiled
    from deploytool.tuning.database import SEARCH_MARGIN, search_won

    target, func, mod = _first_linear_layer(models["mlp"])
    db = open_database(tmp_path / "db", create=True)
    workload = db.commit_workload(mod)

    def commit(sch, us):
        db.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, workload, [us * 1e-6], target, ms.arg_info.ArgInfo.from_prim_func(func)))

    def searched():
        sch = tvm.s_tir.Schedule(mod)
        loop = sch.get_loops(sch.get_sblock("matmul"))[0]
        sch.split(loop, sch.sample_perfect_tile(loop, n=2))
        return sch

    assert search_won(db, func)  # no records at all: the database's best, if any, stands
    commit(register_tiled(mod, accumulator_lanes(target)), 100)
    assert not search_won(db, func)  # the register-tiled record is the best
    commit(searched(), 80)
    assert SEARCH_MARGIN < 0.8 and not search_won(db, func)  # 20% faster: not enough
    commit(searched(), 70)
    assert search_won(db, func)


@pytest.mark.slow
def test_a_register_tiled_record_of_an_older_schedule_is_measured_again(models, tmp_path):
    """A database tuned by an older deploytool holds its register-tiled schedules; when
    schedules.py has changed since, tuning measures the current ones too (a resumed run with
    the same schedules measures nothing twice)."""
    from tvm.s_tir import meta_schedule as ms

    from deploytool.schedules.cpu import accumulator_lanes, register_tiled

    target, func, mod = _first_linear_layer(models["mlp"])
    db = open_database(tmp_path / "db", create=True)
    other_lanes = 96 if accumulator_lanes(target) == 256 else 256  # other tiles: "older"
    db.commit_tuning_record(ms.database.TuningRecord(
        register_tiled(mod, other_lanes).trace, db.commit_workload(mod), [1e-4], target,
        ms.arg_info.ArgInfo.from_prim_func(func)))
    for measured in (2, 0):  # both Linear layers with register tiles, then none: all there
        outcome = CliRunner().invoke(main, ["tune", str(models["mlp"]), "--trials", "3",
                                            "--db", str(tmp_path / "db")])
        assert outcome.exit_code == 0, outcome.output
        if measured:
            assert f"register-tiled or pooling) of {measured} kernel(s)" in outcome.output
        else:
            assert "measured the default schedule" not in outcome.output


def test_a_corrupt_database_is_a_clear_error(models, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text("")
    (db / "database_tuning_record.json").write_text('[0, [["Sample\n')
    with pytest.raises(DeploytoolError, match="corrupt.*line 1"):
        open_database(db)
    code, output = _compile([str(models["mlp"]), "--db", str(db), "-o", str(tmp_path / "pkg")])
    assert code == 1
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: tuning database") and "is corrupt" in last
    assert "Traceback" not in output
    assert not (tmp_path / "pkg").exists()
    outcome = CliRunner().invoke(main, ["tune", str(models["mlp"]), "--db", str(db)])
    assert outcome.exit_code == 1 and "is corrupt" in outcome.output


def test_durations_and_bad_budget():
    assert parse_duration("90") == 90
    assert parse_duration("20m") == 1200
    assert parse_duration("1.5h") == 5400
    with pytest.raises(DeploytoolError):
        parse_duration("soon")
    outcome = CliRunner().invoke(main, ["tune", "x.pt", "--time-budget", "0m"])
    assert outcome.exit_code == 2 and "is not a duration" in outcome.output


def test_default_database_is_keyed_by_target_and_cpu():
    from deploytool.targets import load_target

    path = default_db_dir(load_target("x86_64-avx2"))
    assert path == Path("artifacts/tuning/x86_64-avx2-haswell")


@pytest.mark.slow
def test_trials_measured_over_rpc_land_in_the_database(models, tmp_path):
    """A tracker and a server on loopback (the server measures this x86 machine): the plumbing."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = None
    try:
        server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, key="loopback",
                            tracker_addr=("127.0.0.1", tracker.port), silent=True)
        deadline = time.monotonic() + 30  # the server registers with the tracker
        while time.monotonic() < deadline:
            summary = rpc.connect_tracker("127.0.0.1", tracker.port).summary()
            if any(s["key"].startswith("server:loopback") for s in summary["server_info"]):
                break
            time.sleep(0.5)
        db = tmp_path / "db"
        outcome = CliRunner().invoke(main, [
            "tune", str(models["mlp"]), "--trials", "3", "--db", str(db),
            "--rpc-tracker", f"127.0.0.1:{tracker.port}", "--rpc-key", "loopback"])
        assert outcome.exit_code == 0, outcome.output
        assert "over RPC" in outcome.output
        measured = [r for r in _records(db) if r[1][1]]  # records with run times
        assert len(measured) >= 1
    finally:
        if server is not None:
            server.terminate()
        tracker.terminate()


def test_wrong_rpc_combinations_fail_clearly(models):
    outcome = CliRunner().invoke(main, ["tune", str(models["mlp"]), "--rpc-tracker", "h:1"])
    assert outcome.exit_code == 1 and "--rpc-tracker needs --rpc-key" in outcome.output
    arm = json.dumps({"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                 "mattr": ["+neon"]}, "arch": "aarch64",
                      "cxx": "aarch64-linux-gnu-g++"})
    outcome = CliRunner().invoke(main, ["tune", str(models["mlp"]), "--target", arm])
    assert outcome.exit_code == 1
    assert "cannot measure kernels built for" in outcome.output and "--rpc" in outcome.output
