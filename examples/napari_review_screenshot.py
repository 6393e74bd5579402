"""A napari screenshot of "where to look": the uncertainty layer and the Corrections widget's "Next region".

Segments a demo slide, opens it as ``wsi-seg view`` does, presses "Show uncertainty" (the
per-pixel 1 − top-two margin, bright where the model hesitates) and "Next region ▶" (the
view centres on the region ``wsi-seg review`` ranks first) and saves the screenshot. Needs
the napari extra and a display (a virtual one)::

    xvfb-run -a -s "-screen 0 1400x1000x24" python examples/napari_review_screenshot.py --out docs/napari_review.png
"""

from __future__ import annotations

import logging

from _screenshot import save_screenshot, screenshot_parser, segmented_demo, settle, workdir

log = logging.getLogger("napari_review_screenshot")


def main(argv: list[str] | None = None) -> int:
    parser = screenshot_parser(__doc__.splitlines()[0], "docs/napari_review.png", 4096)
    parser.add_argument("--seed", type=int, default=3, help="demo slide seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg_napari._corrections_widget import CorrectionsWidget
    from wsi_seg_napari.cli import open_viewer

    _, segmented = segmented_demo(workdir(args.workdir, "review"), args.size, args.seed, args.model, args.device)
    viewer = open_viewer(segmented.out, show=True)  # shown (on the virtual display): the canvas gets its real size
    viewer.window.resize(1400, 900)
    settle()
    corrections = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, CorrectionsWidget))
    for layer in viewer.layers:  # the uncertainty over the slide alone
        if (layer.metadata.get("wsi_seg_result") or {}).get("kind") == "mask":
            layer.visible = False
    corrections.show_uncertainty().opacity = 0.75
    region = corrections.go_to_region(+1)
    log.info("region 1: %s", region)
    viewer.scene.camera.zoom *= 0.6  # a little context around it
    settle()
    save_screenshot(viewer, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
