"""Segment a demo slide and save a napari screenshot of slide + mask + one activation map.

Needs the napari extra and a display (a virtual one is fine)::

    xvfb-run -a -s "-screen 0 1280x1024x24" python examples/napari_screenshot.py --out docs/screenshot.png

The slide comes from ``wsi_seg.synthetic`` when available, else a simple generated
blob slide; the model is ``--model``, else the bundled demo model, else (with a
warning) a tiny randomly initialised network whose mask means nothing.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("napari_screenshot")


def blob_slide(path: Path, size_px: int, mpp: float = 0.5, tile_px: int = 256) -> Path:
    """A pyramidal TIFF of glass with a few H&E-coloured ellipses (fallback demo slide)."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size_px, :size_px].astype(np.float32) / size_px
    rgb = np.full((size_px, size_px, 3), 240, np.uint8)
    for cy, cx, ry, rx, color in [(0.45, 0.4, 0.3, 0.22, (170, 90, 150)), (0.55, 0.62, 0.25, 0.2, (205, 130, 180)),
                                  (0.3, 0.7, 0.1, 0.08, (120, 70, 160))]:
        rgb[(yy - cy) ** 2 / ry**2 + (xx - cx) ** 2 / rx**2 < 1] = color
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-12, 13, rgb.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    desc = (f"Aperio Image Library v12.0.0\n{size_px}x{size_px} [0,0 {size_px}x{size_px}] "
            f"({tile_px}x{tile_px}) RGB|AppMag = 20|MPP = {mpp}")
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, tile=(tile_px, tile_px), photometric="rgb", compression="jpeg", description=desc,
                 metadata=None, subfiletype=0)
        for f in (4, 16):
            if size_px // f >= tile_px:
                tw.write(np.ascontiguousarray(rgb[::f, ::f]), tile=(tile_px, tile_px), photometric="rgb",
                         compression="jpeg", metadata=None, subfiletype=1)
    return path


def demo_slide(path: Path, size_px: int) -> Path:
    try:
        from wsi_seg.synthetic import write_demo_slide
    except ImportError:
        log.warning("wsi_seg.synthetic not available; writing a simple blob slide instead")
        return blob_slide(path, size_px)
    written = write_demo_slide(path, size_px=(size_px, size_px), mpp=0.25, seed=0)
    return Path(getattr(written, "path", path))


def model_path(requested: Path | None, workdir: Path) -> Path:
    from wsi_seg.errors import CheckpointError
    from wsi_seg.model.default import default_model_path

    if requested is not None:
        return requested
    try:
        return default_model_path()
    except CheckpointError:
        import torch

        from wsi_seg.model import PsclNet, preset_config, save_checkpoint

        torch.manual_seed(0)
        log.warning("no bundled demo model: using a tiny random network (its mask is meaningless)")
        return save_checkpoint(PsclNet(preset_config("tiny", stage=2)), workdir / "tiny-random")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"), help="PNG to write")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled demo model)")
    parser.add_argument("--size", type=int, default=4096, help="demo slide width and height in px")
    parser.add_argument("--workdir", type=Path, default=None, help="where to keep the slide and result")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg_napari._summary_widget import SummaryWidget
    from wsi_seg_napari.cli import open_viewer

    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wsi-seg-screenshot-"))
    workdir.mkdir(parents=True, exist_ok=True)
    slide = demo_slide(workdir / "demo_slide.tif", args.size)
    model = load_checkpoint(model_path(args.model, workdir))  # segment_slide moves it to --device
    result = segment_slide(slide, workdir / "demo.zarr", model,
                           SegmentOptions(device=args.device, overwrite=True, workers=0, progress=False))
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
    scale_bar = viewer.canvas.overlays["scale_bar"] if hasattr(viewer, "canvas") else viewer.scale_bar
    scale_bar.position = "bottom_left"  # bottom right is clipped when the window is never shown
    viewer.reset_view()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(args.out), canvas_only=False)
    viewer.close()
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
