"""jaxmnist.serve: the JSON API (its answers are predict.to_mnist and the model's own), bad input refused while
the server goes on, a bounded load test on loopback, the command line, and the page in a real browser
(headless Chromium: digits drawn with pointer strokes, the class read from the page)."""

import concurrent.futures
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import numpy as np
import pytest
from PIL import Image

import draw_digits
from jaxmnist import interop, predict, serve, weights

pytestmark = pytest.mark.xdist_group("trained_cnn")  # conftest's trained_cnn: one worker trains it once


@pytest.fixture(scope="module")
def model(trained_cnn):
    return weights.from_workdir(str(trained_cnn))


@pytest.fixture(scope="module")
def server(model):
    srv = serve.Server(model, "127.0.0.1", 0, client_timeout_s=2.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON or raw bytes, headers) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    is_json = r.getheader("Content-Type", "").startswith("application/json")
    return r.status, json.loads(raw) if is_json and raw else raw, r


def photo(digit: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    """An MNIST digit as a user's file: dark ink on white, enlarged, off-centre, in `fmt`."""
    return draw_digits.digit_file(digit, fmt, scale=6, mode=mode, page=(45, 5, 15, 15))


def test_health_and_the_page(server, model):
    status, health, _ = request(server, "GET", "/health")
    assert status == 200 and health["ready"] and health["model"] == "cnn"
    assert health["weights"] == model.source and health["test_accuracy"] == pytest.approx(model.test_acc)
    assert health["test_accuracy"] > 90
    status, page, r = request(server, "GET", "/")
    assert status == 200 and r.getheader("Content-Type").startswith("text/html")
    html = page.decode()
    assert '<canvas id="pad"' in html and 'id="seen"' in html and "/predict" in html
    assert "http://" not in html and "https://" not in html and " src=" not in html  # nothing from elsewhere
    status, body, r = request(server, "HEAD", "/")
    assert status == 200 and body == b"" and int(r.getheader("Content-Length")) == len(page)
    assert request(server, "GET", "/health?probe=1")[0] == request(server, "GET", "/?v=2")[0] == 200  # a query


@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("BMP", "RGB"), ("GIF", "P")])
def test_answers_are_to_mnist_and_the_models_probabilities(server, model, mnist, fmt, mode):
    digits, labels = mnist.test_images[:6], mnist.test_labels[:6]
    for digit, label in zip(digits, labels):
        body = photo(digit, fmt, mode=mode)
        status, got, _ = request(server, "POST", "/predict", body, {"Content-Type": "application/octet-stream"})
        assert status == 200, got
        expected_input = predict.to_mnist(Image.open(io.BytesIO(body)))
        assert np.array_equal(np.asarray(got["input"], np.uint8), expected_input)
        expected = model.probabilities(expected_input[None])[0]
        np.testing.assert_allclose(got["probabilities"], expected, rtol=1e-5, atol=1e-6)  # another batch shape
        assert got["class"] == int(np.argmax(got["probabilities"])) and sum(got["probabilities"]) == pytest.approx(1)
    # the 6 digits, re-photographed: the model still reads them (it reads 98 % of the undisguised test set)
    assert sum(request(server, "POST", "/predict", photo(d, fmt, mode=mode))[1]["class"] == y
               for d, y in zip(digits, labels)) >= 5  # fmt: skip


def png_of_size(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h), 1).save(buf, "PNG", optimize=True)  # one colour: tiny on disk, huge decoded
    return buf.getvalue()


def eps() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 4 4 moveto 24 24 lineto stroke\n%%EOF\n"


BAD = {  # name: (method, path, body, headers, status, words in the error)
    "not an image": ("POST", "/predict", b"hello, server", {}, 400, "not an image"),
    "empty body": ("POST", "/predict", b"", {}, 400, "empty body"),
    "truncated png": ("POST", "/predict", None, {}, 400, "truncated"),
    "blank page": ("POST", "/predict", None, {}, 400, "no digit found"),
    "eps (ghostscript)": ("POST", "/predict", eps(), {}, 400, "not an image"),
    "decompression bomb": ("POST", "/predict", png_of_size(20_000, 20_000), {}, 413, "over the limit"),
    "bad content-length": ("POST", "/predict", None, {"Content-Length": "12abc"}, 400, "Content-Length"),
    "superscript content-length": ("POST", "/predict", None, {}, 400, "Content-Length"),  # '²' passes isdigit
    "get an endpoint": ("GET", "/predict", None, {}, 404, "no such page"),
    "unknown page": ("GET", "/../../etc/passwd", None, {}, 404, "no such page"),
    "post elsewhere": ("POST", "/health", b"x", {}, 404, "no such endpoint"),
    "put": ("PUT", "/predict", b"x", {}, 405, ""),
    "delete": ("DELETE", "/", None, {}, 405, ""),
    "made-up method": ("BREW", "/", None, {}, 405, ""),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_requests_get_a_4xx_with_one_json_line_and_the_server_goes_on(server, mnist, name):
    method, path, body, headers, status, words = BAD[name]
    if name == "truncated png":
        body = photo(mnist.test_images[0])[:300]
    if name == "blank page":
        body = png_of_size(200, 200)
    if name == "bad content-length":  # http.client would send its own header: a raw request instead
        got_status, got = raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n")
    elif name == "superscript content-length":  # a ValueError in the handler, and no reply, before
        request_bytes = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1")
        got_status, got = raw(server, request_bytes)
    else:
        got_status, got, _ = request(server, method, path, body, headers)
    assert got_status == status
    assert set(got) == {"error"} and "\n" not in got["error"] and words in got["error"], got
    assert request(server, "POST", "/predict", photo(mnist.test_images[1]))[0] == 200  # still serving


def raw(server, data: bytes, shut_write: bool = False) -> tuple[int, dict]:
    """A hand-written request on a socket: (status, JSON body)."""
    with socket.create_connection(server.server_address[:2], timeout=30) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_oversized_short_and_unannounced_bodies(server, mnist):
    # over 5 MB by its Content-Length: refused unread
    status, got = raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 6000000\r\n\r\n")
    assert status == 413 and "over the limit of 5,242,880" in got["error"]
    # a body that ends before its Content-Length (the client hangs up its side)
    status, got = raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, True)
    assert status == 400 and "ended after 10 of the 1,000 bytes" in got["error"]
    # ... or stalls: answered after the client timeout (2 s here, 10 s by default)
    t0 = time.monotonic()  # (the whole reply, to the server's close: headers and body are two writes)
    status, got = raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nxx")
    assert status == 400 and "the body stalled" in got["error"] and 1.5 < time.monotonic() - t0 < 20
    status, got = raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411
    assert request(server, "GET", "/health")[1]["ready"]


def test_a_failing_model_is_a_500_for_that_request_and_the_server_goes_on(server, mnist, monkeypatch):
    class Broken:
        buckets = (1,)

        def __call__(self, images):
            raise RuntimeError("out of memory\nmore lines")

    monkeypatch.setattr(server.batcher, "predict", Broken())
    status, got, _ = request(server, "POST", "/predict", photo(mnist.test_images[0]))
    assert status == 500 and got == {"error": "the model failed: RuntimeError: out of memory"}
    monkeypatch.undo()
    assert request(server, "POST", "/predict", photo(mnist.test_images[0]))[0] == 200


def test_a_stop_answers_the_requests_in_flight_and_takes_no_new_ones(server, mnist, monkeypatch):
    monkeypatch.setattr(server, "stopping", False)  # back to serving afterwards, for the module's other tests
    started, release = threading.Event(), threading.Event()
    submit = server.batcher.submit

    def held(image):  # a request the model is still working on
        started.set()
        release.wait(30)
        return submit(image)

    monkeypatch.setattr(server.batcher, "submit", held)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(request, server, "POST", "/predict", photo(mnist.test_images[0]))
        assert started.wait(30)
        assert server.drain(timeout_s=0.2) == 1  # still running after the wait: the caller hears how many
        with pytest.raises(http.client.RemoteDisconnected):  # a new request while stopping: closed unanswered
            request(server, "GET", "/health")
        release.set()
        assert server.drain(timeout_s=30) == 0
        status, got, headers = answer.result(timeout=30)
    assert status == 200 and len(got["probabilities"]) == 10 and headers.getheader("Connection") == "close"
    assert server.in_flight == 0


def test_200_requests_from_16_threads_all_answered_nothing_compiled(server, mnist):
    digits = mnist.test_images[:200]
    bodies = [photo(d) for d in digits]
    before = request(server, "GET", "/health")[1]

    def ask(i):
        t0 = time.perf_counter()
        status, got, _ = request(server, "POST", "/predict", bodies[i])
        return status, got["class"] if status == 200 else got, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(200)))
    assert [a[0] for a in answers] == [200] * 200
    alone = [request(server, "POST", "/predict", bodies[i])[1]["class"] for i in range(0, 200, 20)]
    assert [answers[i][1] for i in range(0, 200, 20)] == alone  # batched with others or alone: the same class
    accuracy = np.mean([a[1] for a in answers] == mnist.test_labels[:200])
    after = request(server, "GET", "/health")[1]
    assert after["answered"] - before["answered"] == 210
    assert after["compiles_since_ready"] == before["compiles_since_ready"]  # (this process's tests compile too)
    latency = np.array([a[2] for a in answers]) * 1e3
    print(f"\n200 requests, 16 threads: {after['batches'] - before['batches']} batches, accuracy {accuracy:.1%}, "
          f"latency median {np.median(latency):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms (under load)")  # fmt: skip
    assert accuracy >= 0.9


def test_predictor_pads_to_buckets_and_splits_big_batches(model, mnist):
    shaken = jax.tree.map(lambda w: w * 0.9, model.variables)  # another member for an ensemble
    ensemble = weights.Ensemble.of([model, weights.Model("cnn", shaken, "0.9 x the weights")])
    images = mnist.test_images[:11]  # 4 + 4 + 3 (padded to 4)
    for m in (model, ensemble):
        predictor = serve.Predictor(m, buckets=(1, 4))
        np.testing.assert_allclose(predictor(images), m.probabilities(images), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predictor(images[:1]), m.probabilities(images[:1]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ensemble.probabilities(images), model.probabilities(images), atol=1e-3)


# ------------------------------------------------------------------------------------------ the command
def serve_cli(*args, env=None):
    """The command as a terminal starts it: pytest-xdist's workers ignore SIGINT, and a child inherits an ignored
    signal (a handled one is reset to the default at exec), so the worker handles it while the child starts."""
    cmd = [sys.executable, "-m", "jaxmnist.serve", "--port", "0", *args]
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, a service manager's stop
def test_cli_serves_a_torch_state_dict_and_stops_cleanly_while_requests_keep_arriving(model, tmp_path, stop):
    """The signal is sent 5 times, 20 ms apart, while 4 clients keep requesting /health: one that lands while the
    server starts a request's thread still stops it (a SIGTERM raised inside `Thread.start` was once swallowed by
    socketserver and the server went on: this failed about every other run), and the later ones change nothing."""
    pth = interop.save_torch(tmp_path / "cnn.pth", "cnn", model.variables)
    proc = serve_cli("--torch-state-dict", str(pth), "--model", "cnn", "--host", "0.0.0.0", "--quiet")
    done, answered, cut = threading.Event(), [], []

    def client(url):
        while not done.is_set():
            try:
                answered.append(json.loads(urllib.request.urlopen(url, timeout=5).read()))
            except OSError:  # the server stopped under us, between answers
                return
            except http.client.HTTPException as e:  # an answer cut off halfway (IncompleteRead): never
                cut.append(repr(e))
                return

    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith(f"cnn from {pth} (PyTorch cnn)"), lines
        url = lines[1].split("serving on ")[1].split()[0].replace("0.0.0.0", "127.0.0.1") + "health"
        for c in [threading.Thread(target=client, args=(url,), daemon=True) for _ in range(4)]:
            c.start()
        while len(answered) < 50:
            time.sleep(0.01)
        for _ in range(5):
            proc.send_signal(stop)
            time.sleep(0.02)
        _, err = proc.communicate(timeout=30)
    finally:
        done.set()
        proc.kill()
    assert proc.returncode == 0 and "stopped" in err and "Traceback" not in err, err
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine" in err
    assert not cut and "cut off" not in err, (cut, err)  # the stop waited for the answers in flight
    health = answered[0]
    assert health["ready"] and health["model"] == "cnn" and health["test_accuracy"] is None


@pytest.mark.parametrize(
    "args,words",
    [
        ([], "give --workdir or --torch-state-dict"),
        (["--workdir", "/nonexistent"], "--workdir /nonexistent: no such directory"),
        (["--torch-state-dict", "x.pth"], "--torch-state-dict needs --model"),
        (["--workdir", "w", "--port", "70000"], "--port must be in 0-65535"),
        (["--workdir", "w", "--max-bytes", "0"], "--max-bytes must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, words, capsys):
    assert serve.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_cli_port_taken_is_one_line(trained_cnn, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = serve.main(["--workdir", str(trained_cnn), "--port", str(taken.getsockname()[1]), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser():
    try:
        driver = draw_digits.chromium()
    except draw_digits.NoBrowser as e:
        message = f"NOT TESTED: the page in a real browser: {e}"
        print(f"\n{'!' * 20} {message} {'!' * 20}", file=sys.stderr)
        if os.environ.get("JAXMNIST_REQUIRE_BROWSER"):  # .ci/run sets it once it has installed Chromium
            pytest.fail(message)
        pytest.skip(message)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_a_digit_drawn_in_chromium_is_read_on_the_page(server, browser, tmp_path):
    """Digits drawn with mouse, pen and touch strokes; the page's class is the server's answer for the pad's own
    PNG, and the 28x28 view shows that answer's input. Measured with the 2-epoch cnn: 0, 1, 7 (and 2, 3, 4)
    read right; the assertion asks for the three plainest."""
    browser.get(server.url)
    said = {}
    for digit, pointer in ((1, "mouse"), (7, "pen"), (0, "touch"), (3, "mouse"), (4, "mouse"), (2, "pen")):
        draw_digits.clear(browser)
        shown = draw_digits.answer(browser, draw_digits.draw_and_count(browser, digit, pointer))
        png = __import__("base64").b64decode(shown["png"].split(",", 1)[1])
        status, got, _ = request(server, "POST", "/predict", png)
        assert status == 200 and shown["class"] == str(got["class"]), (shown["error"], got)
        assert shown["seen"] == list(np.asarray(got["input"]).ravel())
        said[digit] = got["class"]
    browser.save_screenshot(str(tmp_path / "page.png"))
    print(f"\ndrawn -> the page said: {said}")
    assert [said[d] for d in (0, 1, 7)] == [0, 1, 7], said
    assert "cnn from" in browser.find_element("id", "model").text
