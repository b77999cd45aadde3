"""Screenshot dashboard pages of a running ncsweep API with Debian's headless Chromium (for the README)."""
from __future__ import annotations

import argparse

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="page URL, e.g. http://127.0.0.1:8765/ui/sweeps/1")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--wait-ms", type=int, default=2500, help="time for plots and live data to load")
    args = parser.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(args.url, wait_until="networkidle")
        page.wait_for_timeout(args.wait_ms)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    if errors:
        raise SystemExit(f"console errors on {args.url}: {errors}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
