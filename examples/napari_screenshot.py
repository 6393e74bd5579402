"""Segment a demo slide and save a napari screenshot of slide + mask + one activation map.

Needs the napari extra and a display (a virtual one is fine)::

    xvfb-run -a -s "-screen 0 1280x1024x24" python examples/napari_screenshot.py --out docs/screenshot.png

The slide is a synthetic demo slide; the model is ``--model``, else the bundled demo model.
"""

from __future__ import annotations

import logging

from _screenshot import save_screenshot, screenshot_parser, segmented_demo, workdir

log = logging.getLogger("napari_screenshot")


def main(argv: list[str] | None = None) -> int:
    parser = screenshot_parser(__doc__.splitlines()[0], "docs/screenshot.png", 4096)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg_napari._summary_widget import SummaryWidget
    from wsi_seg_napari.cli import open_viewer

    demo, result = segmented_demo(workdir(args.workdir, "screenshot"), args.size, 0, args.model, args.device)
    slide = demo.path
    log.info("segmented %s: %d patches in %.1f s", slide.name, result.patches_run, result.seconds)

    viewer = open_viewer(slide, result.out, show=False)  # legend/summary and corrections docked
    viewer.window.resize(1400, 860)
    summary = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, SummaryWidget))
    # show the activation map of the largest class over the slide, under the mask
    largest = max(summary.rows, key=lambda r: r.area_um2)
    for layer in viewer.layers:
        meta = layer.metadata.get("wsi_seg_result") or {}
        if meta.get("kind") == "activation" and meta.get("class_name") == largest.name:
            layer.visible, layer.opacity = True, 0.6
    viewer.reset_view()
    save_screenshot(viewer, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
