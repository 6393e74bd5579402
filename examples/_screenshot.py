"""What the examples share: the screenshot scripts' command line, a work folder, demo slides
segmented with the bundled (or a given) model and their ground truth, and letting Qt draw."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def screenshot_parser(description: str, out: str, size_px: int) -> argparse.ArgumentParser:
    """--out, --model, --size, --workdir and --device, as every screenshot script takes them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(out), help="PNG to write")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled demo model)")
    parser.add_argument("--size", type=int, default=size_px, help="demo slide width and height in px")
    parser.add_argument("--workdir", type=Path, default=None, help="where to keep the slides and results")
    parser.add_argument("--device", default="auto")
    return parser


def workdir(given: Path | None, name: str) -> Path:
    """``given``, or a new temporary folder named after the script."""
    folder = given or Path(tempfile.mkdtemp(prefix=f"wsi-seg-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def segmented_demo(folder: Path, size_px: int, seed: int, model: Path | None, device: str):
    """A demo slide written into ``folder`` and segmented there (``demo.zarr``): (DemoSlide, SlideResult)."""
    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.model.default import default_model_path
    from wsi_seg.synthetic import write_demo_slide

    demo = write_demo_slide(folder / "demo_slide.tif", size_px=(size_px, size_px), seed=seed)
    net = load_checkpoint(model or default_model_path())  # segment_slide moves it to the device
    result = segment_slide(demo.path, folder / "demo.zarr", net,
                           SegmentOptions(device=device, overwrite=True, workers=0, progress=False))
    return demo, result


def settle(seconds: float = 3.0) -> None:
    """Let Qt and napari's slicing draw what is queued (the lazy levels load in the background)."""
    import time

    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def save_screenshot(viewer, out: Path) -> None:
    """The whole window (docks included) as ``out``, the scale bar bottom left (bottom right
    is clipped when the window is never shown); closes the viewer."""
    viewer.canvas.overlays["scale_bar"].position = "bottom_left"
    settle(1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False)
    viewer.close()
    print(f"screenshot: {out}")


def segmented_with_truth(demo, out: Path, checkpoint: Path, device: str):
    """``demo`` (a DemoSlide) segmented by ``checkpoint`` into ``out`` (reused when it is
    complete): (the Result, the ground-truth class mask on its level-0 grid)."""
    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.reports.evaluate_slide import ground_truth_at
    from wsi_seg.result.format import is_complete
    from wsi_seg.result.reader import Result

    if not is_complete(out):
        segment_slide(demo.path, out, load_checkpoint(checkpoint),
                      SegmentOptions(device=device, overwrite=True, progress=False))
    result = Result.open(out)
    return result, ground_truth_at(demo.mask_path, result.mpp, result.level_shape(0))


def loop_parser(description: str, seed: int, region_patches: int) -> argparse.ArgumentParser:
    """--work, --model, --size, --seed, --region-patches and --device, as the correction-loop
    scripts take them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, required=True, help="folder for the slide, results and runs")
    parser.add_argument("--model", type=Path, default=None, help="stage-2 checkpoint (default: the bundled demo model)")
    parser.add_argument("--size", type=int, default=4096, help="demo slide side in px (default: 4096)")
    parser.add_argument("--seed", type=int, default=seed, help=f"demo slide seed (default: {seed})")
    parser.add_argument("--region-patches", type=int, default=region_patches,
                        help=f"side of a corrected region, in model patches (default: {region_patches})")
    parser.add_argument("--device", default="cpu")
    return parser
