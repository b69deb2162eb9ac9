"""Draw a digit and watch a trained model read it: a page served on this machine, and its JSON API.

    python -m jaxmnist.serve --workdir ckpt/fast                       # then open http://127.0.0.1:8000/
    python -m jaxmnist.serve --torch-state-dict cnn.pth --model cnn --port 0
    curl --data-binary @digit.png http://127.0.0.1:8000/predict

GET /         the page: draw with mouse, pen or finger (or drop or upload an image); the prediction updates as
              you draw, with the ten probabilities and the 28x28 image the model sees
POST /predict an image in the body (PNG, JPEG, GIF, BMP, WebP, TIFF, ...): {"class", "probabilities", "input"}
GET /health   the model's name, where its weights came from and whether it is ready

The body goes through predict.to_mnist, as `jaxmnist.predict` treats files. It is only ever decoded as a raster
image: nothing from a client is unpickled, used as a path or handed to an external program (EPS and PDF, which
PIL would give to Ghostscript, are refused). Bodies over --max-bytes, images over --max-pixels (decompression
bombs) and anything that is not an image get a 4xx with a one-line JSON error, and the server goes on.
Requests that arrive together are answered by one batch; every batch size the server uses is compiled before
it listens, so no request waits for a compilation.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import io
import ipaddress
import json
import queue
import sys
import threading
import time
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import cli, compile_cache, programs, weights
from jaxmnist.cli import RunError, UsageError
from jaxmnist.predict import to_mnist

MAX_BYTES = 5 << 20  # a request body larger than this is refused unread (413)
MAX_PIXELS = 4096 * 4096  # larger images are refused from their header, before decoding (413)
BUCKETS = (1, 4, 16, 64)  # the batch sizes compiled at start; requests that queue together share one batch
DRAIN_S = 5.0  # on a stop, how long the requests in flight get to be answered
# Raster formats PIL decodes by itself. EPS (Ghostscript), PDF and the like are left out on purpose.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "TGA", "ICO", "PCX", "SGI", "IM", "DIB")


class BadImage(Exception):
    """A request body that cannot be a digit: (HTTP status, one line)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode(body: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A request body -> the uint8 [28, 28] MNIST input (predict.to_mnist). Raises BadImage."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadImage(400, "empty body: POST the bytes of an image file")
    try:
        with Image.open(io.BytesIO(body), formats=FORMATS) as image:
            w, h = image.size  # from the header: nothing is decoded yet
            if w * h > max_pixels:
                raise BadImage(413, f"the image has {w} x {h} pixels, over the limit of {max_pixels:,}")
            image.load()
            return to_mnist(image)
    except BadImage:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, in its header check (far over ours)
        raise BadImage(413, f"the image has too many pixels, over the limit of {max_pixels:,}") from None
    except UnidentifiedImageError:
        raise BadImage(400, f"not an image this server reads ({', '.join(FORMATS[:6])}, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or damaged data; to_mnist's flat image
        message = str(e) if isinstance(e, ValueError) and "digit" in str(e) else f"a damaged or truncated image ({e})"
        raise BadImage(400, message.splitlines()[0] if message else "a damaged image") from None


# ------------------------------------------------------------------------------------- the device side
class Predictor:
    """The model's softmax compiled ahead of time for each bucket: a batch of n digits runs as the smallest
    bucket that holds it (padded), so nothing compiles after the start."""

    def __init__(self, model: weights.Model, buckets: tuple[int, ...] = BUCKETS):
        self.model, self.buckets = model, tuple(sorted(buckets))
        self.variables = jax.device_put(model.variables)
        apply = model.module.apply
        self.programs = {
            b: model.program.lower(apply, self.variables, jax.ShapeDtypeStruct((b, 28, 28), jnp.uint8)).compile()
            for b in self.buckets
        }
        for b, program in self.programs.items():  # the first call of each does its one-time set-up now
            program(self.variables, np.zeros((b, 28, 28), np.uint8)).block_until_ready()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """[n, classes] probabilities for uint8 [n, 28, 28]; n above the largest bucket runs in several calls."""
        out = []
        for i in range(0, len(images), self.buckets[-1]):
            part = images[i : i + self.buckets[-1]]
            b = next(b for b in self.buckets if b >= len(part))
            padded = np.zeros((b, 28, 28), np.uint8)
            padded[: len(part)] = part
            out.append(np.asarray(self.programs[b](self.variables, padded))[: len(part)])
        return np.concatenate(out)


class Batcher:
    """One thread owns the device: it takes whatever requests are waiting (up to the largest bucket), answers
    them with one batch, and repeats. Concurrent clients share batches instead of queueing one by one."""

    def __init__(self, predict: Predictor):
        self.predict, self.queue = predict, queue.Queue()
        self.batches = self.answered = 0
        self.thread = threading.Thread(target=self._loop, name="jaxmnist-batcher", daemon=True)
        self.thread.start()

    def submit(self, image: np.ndarray) -> np.ndarray:
        """The probabilities of one uint8 [28, 28] digit (blocks until its batch has run)."""
        future = concurrent.futures.Future()
        self.queue.put((image, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            waiting = [self.queue.get()]
            while len(waiting) < self.predict.buckets[-1]:
                try:
                    waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                probs = self.predict(np.stack([image for image, _ in waiting]))
            except Exception as e:  # noqa: BLE001  (every waiting request hears of it; the thread goes on)
                for _, future in waiting:
                    future.set_exception(e)
                continue
            self.batches += 1
            self.answered += len(waiting)
            for (_, future), p in zip(waiting, probs):
                future.set_result(p)


# --------------------------------------------------------------------------------------- the HTTP side
def page() -> bytes:
    return resources.files("jaxmnist").joinpath("serve_page.html").read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    """The three routes. Every error is JSON {"error": one line}; the connection, not the server, pays for it."""

    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive: the page's requests reuse one connection
    server_version = "jaxmnist"
    # Headers and body leave as two writes; with Nagle's algorithm the second waits for the client's delayed ACK
    # (40 ms on Linux: every answer took 52 ms, whatever the network, in scripts/serve_bench.py).
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.client_timeout_s  # how long a client may take to send what it announced
        super().setup()

    def handle_one_request(self):
        self.counted = False
        try:
            super().handle_one_request()
        finally:
            if self.counted:
                self.server.end_request()

    def parse_request(self) -> bool:
        """http.server's parsing, then: a stopping server takes no new request (the connection closes unanswered,
        as if the server had gone), and one it takes counts as in flight until its answer is out (`drain`)."""
        if not super().parse_request():
            return False
        self.counted = self.server.begin_request()
        if not self.counted:
            self.close_connection = True
        return self.counted

    @property
    def route(self) -> str:
        """The request's path without its query string (GET /health?x=1 is /health)."""
        return self.path.split("?", 1)[0]

    def do_GET(self):
        if self.route == "/":
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif self.route == "/health":
            self._json(200, self.server.health())
        else:
            self._error(404, f"no such page: {self.path[:80]} (GET /, GET /health, POST /predict)")

    do_HEAD = do_GET  # the same headers, no body (_send)

    def do_POST(self):
        if self.route != "/predict":
            self._error(404, f"no such endpoint: {self.path[:80]} (POST /predict)")
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(411, "send a Content-Length with the image")
            return
        length = length.strip()  # optional white space around a header's value (RFC 9110)
        if not (length.isascii() and length.isdigit()):  # str.isdigit takes '²', which int() refuses
            self._error(400, f"bad Content-Length {length[:20]!r}")
            return
        if int(length) > self.server.max_bytes:
            self._error(413, f"the body has {int(length):,} bytes, over the limit of {self.server.max_bytes:,}")
            return
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            self._error(400, f"the body stalled: {int(length):,} bytes announced, not sent within "
                        f"{self.server.client_timeout_s:g} s")  # fmt: skip
            return
        if len(body) < int(length):
            self._error(400, f"the body ended after {len(body):,} of the {int(length):,} bytes it announced")
            return
        try:
            image = decode(body, self.server.max_pixels)
        except BadImage as e:
            self._error(e.status, str(e))
            return
        try:
            probs = self.server.batcher.submit(image)
        except Exception as e:  # noqa: BLE001  (the model failed: this request hears of it, the server goes on)
            self._error(500, f"the model failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            return
        answer = {"class": int(probs.argmax()), "probabilities": [float(p) for p in probs]}
        self._json(200, {**answer, "input": image.tolist()})

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (unknown method, malformed request line) as JSON too; 501 becomes 405."""
        self._error(405 if code == 501 else code, message or "bad request")

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True  # what is left of an unread or bad body must not be read as the next request
        self._json(status, {"error": message})

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 405:
            self.send_header("Allow", "GET, POST")
        if self.close_connection or self.server.stopping:  # a stopping server closes each connection it answers
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):
        if self.server.access_log:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the connections of a burst of clients, which retry a second later
    # (p99 1.1 s with 16 clients in scripts/serve_bench.py).
    request_queue_size = 128

    def __init__(self, model: weights.Model, host: str = "127.0.0.1", port: int = 8000, *,
                 max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, buckets: tuple[int, ...] = BUCKETS,
                 access_log: bool = False, client_timeout_s: float = 10.0):  # fmt: skip
        self.model, self.max_bytes, self.max_pixels, self.access_log = model, max_bytes, max_pixels, access_log
        self.client_timeout_s = client_timeout_s
        self.page = page()
        t0 = time.perf_counter()
        self.batcher = Batcher(Predictor(model, buckets))  # compiled before the socket opens
        self.ready_s = time.perf_counter() - t0
        self.compiles_at_ready = programs.compile_count()
        self.stopping, self.in_flight, self._changed = False, 0, threading.Condition()
        super().__init__((host, port), Handler)

    def begin_request(self) -> bool:
        with self._changed:
            if not self.stopping:
                self.in_flight += 1
            return not self.stopping

    def end_request(self) -> None:
        with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def drain(self, timeout_s: float = DRAIN_S) -> int:
        """Takes no new requests, waits up to `timeout_s` for those in flight to be answered (a stop never cuts an
        answer off halfway), and returns how many were still running."""
        with self._changed:
            self.stopping = True
            self._changed.wait_for(lambda: self.in_flight == 0, timeout_s)
            return self.in_flight

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def health(self) -> dict:
        return {
            "ready": True,
            "model": self.model.name,
            "weights": self.model.source,
            "test_accuracy": self.model.test_acc,
            "batch_sizes": list(self.batcher.predict.buckets),
            "answered": self.batcher.answered,
            "batches": self.batcher.batches,
            "compiles_since_ready": programs.compile_count() - self.compiles_at_ready,  # stays 0
        }


# ------------------------------------------------------------------------------------------ the CLI
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("python -m jaxmnist.serve", __doc__)
    weights.add_flags(p)
    compile_cache.add_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free one, printed)")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"largest request body (default {MAX_BYTES:,})")
    p.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    return p


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0-65535, got {args.port}")
    if args.max_bytes < 1:
        raise UsageError(f"--max-bytes must be >= 1, got {args.max_bytes}")
    compile_cache.configure(args.no_compile_cache)
    model = weights.load(args)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the model "
              "(the default, 127.0.0.1, serves this machine only)", file=sys.stderr)  # fmt: skip
    try:
        server = Server(model, args.host, args.port, max_bytes=args.max_bytes, access_log=not args.quiet)
    except OSError as e:
        raise RunError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (--port 0 takes a free one)")
    print(f"{model.name} from {model.source}", flush=True)
    print(f"compiled batch sizes {', '.join(map(str, server.batcher.predict.buckets))} in {server.ready_s:.1f} s; "
          f"serving on {server.url} (Ctrl-C to stop)", flush=True)  # fmt: skip
    cli.stop_once_on_signals()  # a service manager's stop is as clean as a Ctrl-C
    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    try:
        wait_while_alive(serving)
        raise RunError("the server stopped by itself (its error is above)")
    except (KeyboardInterrupt, cli.Terminated):
        print("stopped", file=sys.stderr)
    finally:
        server.shutdown()  # returns once serve_forever has (within its 0.5 s poll)
        if left := server.drain():
            print(f"warning: {left} request(s) still running after {DRAIN_S:g} s were cut off", file=sys.stderr)
        server.server_close()
    return 0


def wait_while_alive(thread: threading.Thread, poll_s: float = 0.2) -> None:
    """Sleep until `thread` ends. The main thread does nothing else, so Ctrl-C and SIGTERM, which Python raises there,
    land in `time.sleep`, never inside `serve_forever` (a SIGTERM raised there, in `Thread.start`, was caught by
    socketserver's `except Exception` and the server went on) or `threading`'s lock handling."""
    while thread.is_alive():
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
