"""A rendering of a cohort's ``report.html`` (docs/cohort_report.png).

Writes three demo slides, segments them as one cohort with the bundled demo model
(``wsi-seg segment "slides/*.tif" --out-dir cohort/``), and renders the
``cohort/report.html`` that run wrote with Qt WebEngine (PySide6, in the napari extra),
at the page's full height. Needs a display (a virtual one)::

    xvfb-run -a -s "-screen 0 1400x1000x24" python examples/cohort_report_screenshot.py --out docs/cohort_report.png
"""

from __future__ import annotations

from pathlib import Path

from _screenshot import screenshot_parser, workdir


def render_html(page: Path, out: Path, width_px: int) -> tuple[int, int]:
    """Render the HTML file ``page`` to the PNG ``out``, ``width_px`` wide and as tall as
    the page; returns the (width, height) written."""
    import os

    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Chromium refuses root with its sandbox on (containers, CI)
        os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
    from PySide6.QtCore import QEventLoop, QSize, QTimer, QUrl
    from PySide6.QtWebEngineWidgets import QWebEngineView
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    view = QWebEngineView()
    view.resize(width_px, 600)
    loop = QEventLoop()
    loaded: list[bool] = []
    view.loadFinished.connect(lambda ok: (loaded.append(ok), loop.quit()))
    view.load(QUrl.fromLocalFile(str(page.resolve())))
    view.show()
    loop.exec()
    if not loaded or not loaded[0]:
        raise SystemExit(f"{page}: Qt WebEngine could not load it")
    height: list[float] = []
    view.page().runJavaScript("document.documentElement.scrollHeight", 0,
                              lambda h: (height.append(float(h)), loop.quit()))
    loop.exec()
    view.resize(QSize(width_px, int(height[0]) + 16))
    QTimer.singleShot(1500, loop.quit)  # images decoded and laid out at the new size
    loop.exec()
    image = view.grab()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out)):
        raise SystemExit(f"{out}: could not write the PNG")
    view.close()
    app.processEvents()
    return image.width(), image.height()


def main(argv: list[str] | None = None) -> int:
    parser = screenshot_parser(__doc__.splitlines()[0], "docs/cohort_report.png", 3072)
    parser.add_argument("--slides", type=int, default=3, help="demo slides in the cohort")
    parser.add_argument("--width", type=int, default=1200, help="rendering width in px")
    args = parser.parse_args(argv)

    from wsi_seg.cli.main import main as wsi_seg
    from wsi_seg.cohort.report import REPORT_NAME
    from wsi_seg.synthetic import write_demo_slide

    folder = workdir(args.workdir, "cohort-report")
    slides = folder / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    for seed in range(1, args.slides + 1):
        write_demo_slide(slides / f"slide_{seed}.tif", size_px=(args.size, args.size), seed=seed)
    results = folder / "cohort"  # the report is titled after its folder
    code = wsi_seg(["segment", str(slides / "*.tif"), "--out-dir", str(results), "--device", args.device,
                    "--no-progress", *(["--model", str(args.model)] if args.model else [])])
    if code:
        return code
    width, height = render_html(results / REPORT_NAME, args.out, args.width)
    print(f"rendering of {results / REPORT_NAME}: {args.out} ({width}×{height} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
