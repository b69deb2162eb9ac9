"""Draw digits on jaxmnist.serve's page in a real browser (headless Chromium through Selenium) and read what the
page says; the README's screenshot comes from here, and tests/test_serve.py draws with the same strokes.

    python scripts/draw_digits.py --workdir ckpt/cnn --digits 0,1,7 --screenshot docs/serve.png

Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`) and `selenium`
(the dev extra). Strokes are polylines in pad units (0-1, y down), drawn as pointer events: press, moves, lift.
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import sys
import threading
import time

from PIL import Image

# Each digit: strokes, each a list of (x, y) in [0, 1] of the pad, as a person would draw them.
_ring = [(0.5 + 0.2 * math.sin(t), 0.5 - 0.33 * math.cos(t)) for t in (2 * math.pi * i / 24 for i in range(25))]
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_ring],
    1: [[(0.42, 0.24), (0.52, 0.15), (0.52, 0.5), (0.52, 0.85)]],
    2: [[(0.32, 0.28), (0.45, 0.16), (0.62, 0.2), (0.66, 0.35), (0.5, 0.55), (0.32, 0.84), (0.7, 0.84)]],
    3: [[(0.32, 0.22), (0.5, 0.15), (0.66, 0.24), (0.62, 0.42), (0.48, 0.48), (0.64, 0.56), (0.68, 0.72),
         (0.52, 0.85), (0.32, 0.78)]],
    4: [[(0.58, 0.15), (0.3, 0.6), (0.72, 0.6)], [(0.6, 0.35), (0.6, 0.87)]],
    7: [[(0.3, 0.2), (0.7, 0.2), (0.58, 0.45), (0.45, 0.86)]],
}  # fmt: skip
PAD_PX = 280  # the page's pad (serve_page.html)
MOVE_MS = 16  # each pointer move takes a 60 Hz frame (Selenium's default of 250 ms drew a 0 in 36 s)


def digit_file(digit, fmt: str = "PNG", scale: int = 10, mode: str = "L", page: tuple = (0, 0, 0, 0)) -> bytes:
    """An MNIST digit (uint8 [28, 28], white on black) as a user's image file: dark ink on white, enlarged `scale`
    times, with `page` = (left, top, right, bottom) margins of white around it, in `fmt` and PIL `mode`."""
    left, top, right, bottom = page
    side = 28 * scale
    ink = Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (left + side + right, top + side + bottom), 255)
    canvas.paste(ink, (left, top))
    buf = io.BytesIO()
    canvas.convert(mode).save(buf, fmt)
    return buf.getvalue()


class NoBrowser(Exception):
    """Chromium, its driver or Selenium is missing here: the reason, in one line."""


def chromium(width: int = 1000, height: int = 640):
    """A headless Chromium driven by Selenium, or NoBrowser saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise NoBrowser("selenium is not installed (pip install selenium, or the dev extra)") from None
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or shutil.which("chromium-driver")
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p)
        raise NoBrowser(f"{missing} not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def draw(driver, digit: int, pointer: str = "mouse") -> None:
    """The digit's strokes on the pad as pointer events of `pointer` ('mouse', 'pen' or 'touch')."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    kind = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN, "touch": interaction.POINTER_TOUCH}
    actions = ActionBuilder(driver, mouse=PointerInput(kind[pointer], pointer), duration=MOVE_MS)
    at = lambda x, y: (round((x - 0.5) * PAD_PX), round((y - 0.5) * PAD_PX))  # offsets from the pad's centre
    for stroke in STROKES[digit]:
        points = smooth(stroke)
        actions.pointer_action.move_to(pad, *at(*points[0]))
        actions.pointer_action.pointer_down()
        for point in points[1:]:
            actions.pointer_action.move_to(pad, *at(*point))
        actions.pointer_action.pointer_up()
    actions.perform()


def smooth(stroke: list[tuple[float, float]], steps: int = 6) -> list[tuple[float, float]]:
    """The stroke through its points as a hand draws it: a Catmull-Rom curve, `steps` pointer moves a segment."""
    p = [stroke[0], *stroke, stroke[-1]]
    out = [stroke[0]]
    for i in range(1, len(p) - 2):
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = p[i - 1 : i + 3]
        for t in (k / steps for k in range(1, steps + 1)):
            a, b, c, d = (
                -0.5 * t**3 + t**2 - 0.5 * t,
                1.5 * t**3 - 2.5 * t**2 + 1,
                -1.5 * t**3 + 2 * t**2 + 0.5 * t,
                0.5 * t**3 - 0.5 * t**2,
            )
            out.append((a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3))
    return out


def draw_and_count(driver, digit: int, pointer: str = "mouse") -> int:
    """Draws the digit; returns how many answers the page had before it (for `answer`)."""
    before = int(driver.execute_script("return Number(document.body.dataset.answers)"))
    draw(driver, digit, pointer)
    return before


def answer(driver, answers_before: int, timeout_s: float = 30.0) -> dict:
    """What the page shows once its last drawing has been answered: the class, the pad's PNG, the 28x28 view."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = driver.execute_script("return [document.body.dataset.state, Number(document.body.dataset.answers)]")
        if state[0] == "idle" and state[1] > answers_before:
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"the page did not answer within {timeout_s:.0f} s")
    return driver.execute_script(
        """const seen = document.getElementById("seen").getContext("2d").getImageData(0, 0, 28, 28).data;
        return {class: document.getElementById("prediction").dataset.class,
                error: document.getElementById("status").textContent,
                answers: Number(document.body.dataset.answers),
                png: document.getElementById("pad").toDataURL("image/png"),
                seen: Array.from({length: 784}, (_, i) => seen[4 * i])};"""
    )


def clear(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "clear").click()


def main(argv=None) -> int:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from jaxmnist import serve, weights

    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    weights.add_flags(p)
    p.add_argument("--digits", default="0,1,2,3,4,7", help=f"which to draw, of {sorted(STROKES)}")
    p.add_argument("--pointer", default="mouse", choices=("mouse", "pen", "touch"))
    p.add_argument("--screenshot", help="a PNG of the page after the last digit")
    args = p.parse_args(argv)
    try:
        browser = chromium()
    except NoBrowser as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = serve.Server(weights.load(args), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(server.url)
        for digit in (int(d) for d in args.digits.split(",")):
            clear(browser)
            shown = answer(browser, draw_and_count(browser, digit, args.pointer))
            print(f"drew {digit}: the page says {shown['class'] or shown['error']}")
        if args.screenshot:
            browser.save_screenshot(args.screenshot)
            print(f"screenshot: {args.screenshot}")
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
