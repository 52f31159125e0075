"""bin/deploytool-serve: the KServe v2 (Open Inference Protocol) HTTP server of every package.

Each server runs in a subprocess with an empty environment on a free loopback port (--port 0,
the port read from its first line); every request goes to 127.0.0.1 only."""

from __future__ import annotations

import http.client
import json
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deploytool.tensors import parse_input_spec

KSERVE = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
          "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "bool": "BOOL"}


class Server:
    """A running deploytool-serve: start it, wait for /v2/health/ready, talk to it, stop it."""

    def __init__(self, package: Path, *args: str, prefix: list[str] | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None,
                 ready_timeout: float = 60):
        self.package = package
        self.log = log
        command = [*(prefix or []), str(package / "bin" / "deploytool-serve"), str(package),
                   "--port", "0", *args]
        self.stderr = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(command, env=env or {}, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        try:
            line = self._line(ready_timeout)
            assert "listening on http://127.0.0.1:" in line, line
            self.port = int(line.rsplit(":", 1)[1])
            deadline = time.monotonic() + ready_timeout
            while self.get("/v2/health/ready")[0] != 200:
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.05)
        except BaseException:
            self.kill()
            raise

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"no output from the server in {timeout} s: {self.stderr_text()}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"the server exited with {self.proc.returncode}: "
                                 f"{self.stderr_text()}")
        return line.strip()

    def stderr_text(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                headers: dict | None = None, timeout: float = 60):
        """(status, parsed JSON or raw bytes, headers)."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            kind = response.getheader("Content-Type", "")
            return (response.status, json.loads(data) if kind == "application/json" else data,
                    dict(response.getheaders()))
        finally:
            connection.close()

    def get(self, path: str):
        try:
            status, data, _ = self.request("GET", path, timeout=5)
        except OSError:
            return 0, None
        return status, data

    def infer(self, body, model: str = "mlp", **kwargs):
        status, data, _ = self.request("POST", f"/v2/models/{model}/infer", body, **kwargs)
        return status, data

    def signal(self, number: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.proc.send_signal(number)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        if self.stderr is not subprocess.DEVNULL:
            self.stderr.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def request_of(arrays: dict[str, np.ndarray], nested: bool = False, **extra) -> dict:
    """A KServe v2 infer request holding ``arrays`` as JSON data (flat, or nested lists)."""
    return {**extra, "inputs": [
        {"name": name, "shape": list(array.shape), "datatype": KSERVE[str(array.dtype)],
         "data": array.tolist() if nested else array.ravel().tolist()}
        for name, array in arrays.items()]}


def outputs_of(response: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response["outputs"]}


def self_test_vectors(package: Path):
    """The package's test vectors: ({input: array}, {output: array}, atol, rtol)."""
    manifest = json.loads((package / "manifest.json").read_text())
    test = manifest["self_test"]
    inputs = {i["name"]: np.load(package / i["file"]) for i in test["inputs"]}
    outputs = {o["name"]: np.load(package / o["file"]) for o in test["outputs"]}
    return inputs, outputs, test["atol"], test["rtol"]


def assert_matches(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol=1e-5,
                   rtol=1e-5) -> None:
    assert set(got) == set(expected)
    for name, reference in expected.items():
        assert got[name].shape == reference.shape, name
        np.testing.assert_allclose(got[name], reference, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def mlp_server(mlp_package, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "mlp.log"
    with Server(mlp_package.path, "--workers", "2", "--max-body-bytes", "65536",
                log=log) as server:
        yield server


@pytest.fixture(scope="module")
def mlp_model(mlp_package):
    import deploytool.runtime as dt

    with dt.load(mlp_package.path) as model:
        yield model


# --- the package ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_package_has_the_server(mlp_package):
    server = mlp_package.path / "bin" / "deploytool-serve"
    assert server.is_file()
    help_text = subprocess.run([server, "--help"], env={}, capture_output=True, text=True)
    assert help_text.returncode == 0 and "KServe v2" in help_text.stdout
    assert "bin/deploytool-serve" in (mlp_package.path / "README.md").read_text()
    # only the package's own libraries and the system's
    libraries = subprocess.run(["ldd", server], capture_output=True, text=True).stdout
    assert "boost" not in libraries
    assert "not found" not in libraries


@pytest.mark.slow
def test_without_boost_the_package_has_no_server_and_says_so(tmp_path, monkeypatch):
    from deploytool.targets import load_target
    from deploytool.toolchains import native

    monkeypatch.setattr(native, "BOOST_FOLDERS", ())
    monkeypatch.delenv("DEPLOYTOOL_BOOST_INCLUDE", raising=False)
    lines: list[str] = []
    native.build_native(load_target("cpu").resolved(), tmp_path, log=lines.append)
    assert (tmp_path / "bin" / "deploytool-run").is_file()
    assert not (tmp_path / "bin" / "deploytool-serve").exists()
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "Boost (libboost-dev) is not installed" in lines[0]
    assert "no bin/deploytool-serve" in lines[0] and "apt-get install libboost-dev" in lines[0]


# --- protocol ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_health_and_metadata(mlp_server, mlp_package):
    assert mlp_server.get("/v2/health/live") == (200, {"live": True})
    assert mlp_server.get("/v2/health/ready") == (200, {"ready": True})
    assert mlp_server.get("/v2/models/mlp/ready") == (200, {"name": "mlp", "ready": True})
    assert mlp_server.get("/v2/models/mlp/versions/1/ready")[0] == 200
    status, server = mlp_server.get("/v2")
    assert status == 200 and server["name"] == "deploytool-serve"
    status, metadata = mlp_server.get("/v2/models/mlp")
    assert status == 200
    manifest = mlp_package.manifest
    assert metadata == {
        "name": manifest["model"]["name"], "versions": ["1"], "platform": "deploytool",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 512]}],
        "outputs": [{"name": t["name"], "datatype": "FP32", "shape": t["shape"]}
                    for t in manifest["outputs"]]}


@pytest.mark.slow
@pytest.mark.parametrize("nested", [False, True])
def test_infer_matches_the_self_test_vectors(mlp_server, mlp_package, nested):
    inputs, outputs, atol, rtol = self_test_vectors(mlp_package.path)
    status, response = mlp_server.infer(request_of(inputs, nested, id="req-7"))
    assert status == 200, response
    assert response["model_name"] == "mlp" and response["id"] == "req-7"
    assert [o["datatype"] for o in response["outputs"]] == ["FP32"] * len(outputs)
    assert_matches(outputs_of(response), outputs, atol=atol + 1e-6, rtol=rtol + 1e-6)


@pytest.mark.slow
def test_cnn_infer_and_requested_outputs(cnn_package, tmp_path):
    inputs, outputs, atol, rtol = self_test_vectors(cnn_package.path)
    name = cnn_package.manifest["model"]["name"]
    with Server(cnn_package.path, log=tmp_path / "serve.log") as server:
        status, response = server.infer(request_of(inputs, nested=True), model=name)
        assert status == 200, response
        assert_matches(outputs_of(response), outputs, atol=atol + 1e-6, rtol=rtol + 1e-6)
        first = next(iter(outputs))
        status, response = server.infer(
            {**request_of(inputs), "outputs": [{"name": first}]}, model=name)
        assert status == 200 and [o["name"] for o in response["outputs"]] == [first]


@pytest.mark.slow
def test_binary_tensor_data_extension(mlp_server, mlp_package):
    inputs, outputs, atol, rtol = self_test_vectors(mlp_package.path)
    x = inputs["x"]
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    status, body, headers = mlp_server.request(
        "POST", "/v2/models/mlp/infer", header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    response = json.loads(body[:length])
    (output,) = response["outputs"]
    assert output["parameters"]["binary_data_size"] == len(body) - length
    got = np.frombuffer(body[length:], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, outputs[output["name"]], atol=atol + 1e-6, rtol=rtol + 1e-6)
    # too few bytes for the declared size: 400, nothing allocated from the claim
    status, body, _ = mlp_server.request(
        "POST", "/v2/models/mlp/infer", header + x.tobytes()[:100],
        {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "binary data" in body["error"]


@pytest.mark.slow
def test_name_override(mlp_package, tmp_path):
    with Server(mlp_package.path, "--name", "classifier", log=tmp_path / "serve.log") as server:
        assert server.get("/v2/models/classifier")[1]["name"] == "classifier"
        assert server.get("/v2/models/mlp")[0] == 404
        inputs, _, _, _ = self_test_vectors(mlp_package.path)
        status, response = server.infer(request_of(inputs), model="classifier")
        assert status == 200 and response["model_name"] == "classifier"


# --- bad requests --------------------------------------------------------------------------------

def _x(shape=(1, 512), datatype="FP32", name="x", data=None):
    count = int(np.prod(shape))
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                        "data": [0.5] * count if data is None else data}]}


BAD_REQUESTS = [
    # (what, method, path, body, status, words in the error)
    ("bad JSON", "POST", "/v2/models/mlp/infer", b'{"inputs": [', 400, "not valid JSON"),
    ("not an object", "POST", "/v2/models/mlp/infer", b"[1, 2]", 400, "JSON object"),
    ("no inputs field", "POST", "/v2/models/mlp/infer", {}, 400, '"inputs"'),
    ("missing input", "POST", "/v2/models/mlp/infer", {"inputs": []}, 400, "lacks input 'x'"),
    ("unknown input", "POST", "/v2/models/mlp/infer", _x(name="y"), 400, "no input named 'y'"),
    ("wrong shape", "POST", "/v2/models/mlp/infer", _x((2, 512)), 400, "shape [2,512]"),
    ("wrong rank", "POST", "/v2/models/mlp/infer", _x((512,)), 400, "shape [512]"),
    ("wrong datatype", "POST", "/v2/models/mlp/infer", _x(datatype="INT64"), 400, "datatype"),
    ("too few values", "POST", "/v2/models/mlp/infer", _x(data=[1.0, 2.0]), 400, "2 values"),
    ("a string value", "POST", "/v2/models/mlp/infer", _x(data=["a"] * 512), 400, "a string"),
    ("unknown output", "POST", "/v2/models/mlp/infer", {**_x(), "outputs": [{"name": "z"}]},
     400, "no output named 'z'"),
    ("deep nesting", "POST", "/v2/models/mlp/infer", b"[" * 10000, 400, "nested"),
    ("unknown model", "POST", "/v2/models/resnet/infer", _x(), 404, "unknown model 'resnet'"),
    ("unknown model metadata", "GET", "/v2/models/resnet", None, 404, "unknown model"),
    ("unknown version", "GET", "/v2/models/mlp/versions/7", None, 404, "no version '7'"),
    ("unknown endpoint", "GET", "/v3/models", None, 404, "no such endpoint"),
    ("GET infer", "GET", "/v2/models/mlp/infer", None, 405, "use POST"),
    ("POST health", "POST", "/v2/health/live", b"", 405, "use GET"),
    ("DELETE model", "DELETE", "/v2/models/mlp", None, 405, "use GET"),
    ("oversize body", "POST", "/v2/models/mlp/infer", b" " * 100000, 413, "--max-body-bytes"),
]


@pytest.mark.slow
def test_bad_requests_get_4xx_and_the_server_lives_on(mlp_server, mlp_package, tmp_path):
    for what, method, path, body, status, words in BAD_REQUESTS:
        got, data, headers = mlp_server.request(method, path, body)
        assert got == status, (what, data)
        assert isinstance(data, dict) and words in data["error"], (what, data)
        assert headers["Content-Type"] == "application/json"
        if status == 405:
            assert headers["Allow"] in ("GET", "POST"), what
    # HTTP that is not HTTP at all
    with socket.create_connection(("127.0.0.1", mlp_server.port), timeout=10) as raw:
        raw.sendall(b"GARBAGE\r\n\r\n")
        reply = raw.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400"), reply
    # still alive and right
    assert mlp_server.get("/v2/health/live") == (200, {"live": True})
    inputs, outputs, atol, rtol = self_test_vectors(mlp_package.path)
    status, response = mlp_server.infer(request_of(inputs))
    assert status == 200
    assert_matches(outputs_of(response), outputs, atol=atol + 1e-6, rtol=rtol + 1e-6)


# --- concurrency, the queue, shutdown, load ----------------------------------------------------

@pytest.mark.slow
def test_eight_concurrent_clients(mlp_server, mlp_model):
    """8 threads, 10 requests each, every one with its own inputs, on keep-alive connections."""
    rng = np.random.default_rng(0)
    cases = [[rng.standard_normal((1, 512), dtype=np.float32) for _ in range(10)]
             for _ in range(8)]
    expected = [[mlp_model.run({"x": x})["output"] for x in client] for client in cases]
    start = threading.Barrier(8)
    failures: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", mlp_server.port, timeout=60)
        start.wait()
        try:
            for x, reference in zip(cases[index], expected[index], strict=True):
                connection.request("POST", "/v2/models/mlp/infer",
                                   json.dumps(request_of({"x": x}, id=str(index))))
                response = connection.getresponse()
                body = json.loads(response.read())
                if response.status != 200 or body["id"] != str(index):
                    failures.append(f"client {index}: {response.status} {body}")
                    return
                got = np.array(body["outputs"][0]["data"], np.float32).reshape(reference.shape)
                if not np.allclose(got, reference, atol=1e-5, rtol=1e-5):
                    failures.append(f"client {index}: {got} != {reference}")
        except Exception as err:  # reported below, with the others
            failures.append(f"client {index}: {err!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures


def _infer_in_thread(server: Server, body: dict, results: list, start=None):
    def run():
        if start is not None:
            start.wait()
        try:
            results.append(server.infer(body))
        except Exception as err:
            results.append((0, repr(err)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.slow
def test_requests_beyond_the_queue_get_503(mlp_package, mlp_model, tmp_path):
    x = np.full((1, 512), 0.25, np.float32)
    reference = mlp_model.run({"x": x})["output"]
    with Server(mlp_package.path, "--workers", "1", "--max-queue", "1", "--delay-ms", "600",
                log=tmp_path / "serve.log") as server:
        results: list = []
        start = threading.Barrier(6)
        threads = [_infer_in_thread(server, request_of({"x": x}), results, start)
                   for _ in range(6)]
        for thread in threads:
            thread.join(60)
        statuses = sorted(status for status, _ in results)
        assert len(statuses) == 6 and set(statuses) <= {200, 503}, results
        assert 1 <= statuses.count(200) <= 3 and statuses.count(503) >= 3, statuses
        for status, body in results:
            if status == 503:
                assert "busy" in body["error"] and "--max-queue 1" in body["error"]
            else:
                np.testing.assert_allclose(outputs_of(body)["output"], reference, atol=1e-5)
        assert server.get("/v2/health/ready")[0] == 200  # the queue drained


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits_0(mlp_package, mlp_model, tmp_path):
    x = np.full((1, 512), -0.5, np.float32)
    reference = mlp_model.run({"x": x})["output"]
    server = Server(mlp_package.path, "--delay-ms", "1500", log=tmp_path / "serve.log")
    with server:
        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        idle.request("GET", "/v2/health/live")  # a keep-alive connection left idle
        assert idle.getresponse().read() == b'{"live":true}'
        results: list = []
        thread = _infer_in_thread(server, request_of({"x": x}), results)
        time.sleep(0.5)  # the request is in the worker, held by --delay-ms
        start = time.monotonic()
        assert server.signal(signal.SIGTERM, timeout=10) == 0, server.stderr_text()
        elapsed = time.monotonic() - start
        thread.join(10)
        idle.close()
        assert elapsed < 5
        ((status, body),) = results
        assert status == 200, body
        np.testing.assert_allclose(outputs_of(body)["output"], reference, atol=1e-5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2)
    assert "SIGTERM: finishing in-flight requests" in server.stderr_text()


@pytest.mark.slow
def test_sigint_exits_0(mlp_package, tmp_path):
    with Server(mlp_package.path, log=tmp_path / "serve.log") as server:
        start = time.monotonic()
        assert server.signal(signal.SIGINT, timeout=10) == 0
        assert time.monotonic() - start < 5


@pytest.mark.slow
def test_bounded_load(mlp_server, mlp_package, capsys):
    """4 clients on keep-alive connections for 2 s: throughput and p99 are printed."""
    inputs, outputs, atol, rtol = self_test_vectors(mlp_package.path)
    body = json.dumps(request_of(inputs))
    latencies: list[list[float]] = [[] for _ in range(4)]
    errors: list[str] = []
    start = threading.Barrier(4)
    stop_at: list[float] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", mlp_server.port, timeout=30)
        start.wait()
        if index == 0:
            stop_at.append(time.monotonic() + 2.0)
        while not stop_at:
            time.sleep(0.001)
        try:
            while time.monotonic() < stop_at[0] and len(latencies[index]) < 100000:
                begin = time.perf_counter()
                connection.request("POST", "/v2/models/mlp/infer", body)
                response = connection.getresponse()
                data = response.read()
                latencies[index].append(time.perf_counter() - begin)
                if response.status != 200:
                    errors.append(data.decode())
                    return
        finally:
            connection.close()

    wall = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wall = time.monotonic() - wall
    assert not errors, errors[:3]
    every = np.array([t for client in latencies for t in client]) * 1000
    assert len(every) >= 20
    with capsys.disabled():
        print(f"\nserve load: 4 clients, {len(every)} requests in {wall:.2f} s, "
              f"{len(every) / wall:.0f} req/s, latency ms p50 {np.percentile(every, 50):.2f} "
              f"p99 {np.percentile(every, 99):.2f} max {every.max():.2f}")
    assert np.percentile(every, 99) < 10000


# --- dynamic shapes ------------------------------------------------------------------------------

@pytest.mark.slow
def test_dynamic_batch_runs_at_the_request_shape(compile_package, tmp_path):
    import deploytool.runtime as dt

    package = compile_package("cnn", inputs=[parse_input_spec("image:N<=8x3x32x32:float32")],
                              java=False)
    name = package.manifest["model"]["name"]
    with Server(package.path, log=tmp_path / "serve.log") as server:
        status, metadata = server.get(f"/v2/models/{name}")
        assert metadata["inputs"] == [{"name": "image", "datatype": "FP32",
                                       "shape": [-1, 3, 32, 32]}]
        assert metadata["outputs"][0]["shape"][0] == -1
        rng = np.random.default_rng(1)
        with dt.load(package.path) as model:
            for batch in (3, 1, 8):
                x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
                status, response = server.infer(request_of({"image": x}), model=name)
                assert status == 200, response
                assert_matches(outputs_of(response), model.run({"image": x}), atol=1e-4)
        x = np.zeros((9, 3, 32, 32), np.float32)
        status, response = server.infer(request_of({"image": x}), model=name)
        assert status == 400 and "upper bound" in response["error"]
        status, response = server.infer(request_of({"image": np.zeros((2, 3, 32, 31),
                                                                        np.float32)}),
                                        model=name)
        assert status == 400 and "[2,3,32,31]" in response["error"]


# --- a standard KServe v2 client -----------------------------------------------------------------

@pytest.mark.slow
def test_tritonclient(mlp_server, mlp_package):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    inputs, outputs, atol, rtol = self_test_vectors(mlp_package.path)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{mlp_server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp")
        metadata = client.get_model_metadata("mlp")
        assert metadata["platform"] == "deploytool"
        assert metadata["inputs"][0]["shape"] == [1, 512]
        for binary in (False, True):
            tensor = httpclient.InferInput("x", list(inputs["x"].shape), "FP32")
            tensor.set_data_from_numpy(inputs["x"], binary_data=binary)
            (name,) = outputs
            result = client.infer("mlp", [tensor], outputs=[
                httpclient.InferRequestedOutput(name, binary_data=binary)])
            np.testing.assert_allclose(result.as_numpy(name), outputs[name],
                                       atol=atol + 1e-6, rtol=rtol + 1e-6)
        wrong = httpclient.InferInput("x", [1, 512], "FP64")
        wrong.set_data_from_numpy(inputs["x"].astype(np.float64), binary_data=False)
        with pytest.raises(InferenceServerException, match="datatype FP64"):
            client.infer("mlp", [wrong])
    finally:
        client.close()


# --- aarch64 -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.cross
def test_arm64_server_runs_under_qemu(compile_package, tmp_path):
    from test_cross import needs_cross

    from deploytool.errors import DeploytoolError
    from deploytool.toolchains.emulation import runner_command
    from deploytool.toolchains.tvm_runtime import elf_arch

    needs_cross()
    try:
        package = compile_package("mlp", "arm64")
    except DeploytoolError as err:
        if "could not download" in str(err):
            pytest.skip(f"the aarch64 TVM runtime is not cached and cannot be fetched: {err}")
        raise
    assert elf_arch(package.path / "bin" / "deploytool-serve") == "aarch64"
    prefix, env = runner_command("aarch64")
    prefix = [shutil.which(prefix[0]) or prefix[0], *prefix[1:]] if prefix else []
    inputs, outputs, atol, rtol = self_test_vectors(package.path)
    with Server(package.path, prefix=prefix, env=env, log=tmp_path / "serve.log",
                ready_timeout=120) as server:
        status, response = server.infer(request_of(inputs))
        assert status == 200, response
        assert_matches(outputs_of(response), outputs, atol=atol + 1e-6, rtol=rtol + 1e-6)
        assert server.signal(signal.SIGTERM, timeout=30) == 0
