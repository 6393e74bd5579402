"""``segment_slide`` with a null model (``predict`` returns zeros at once), alone in a process.

The engine's ceiling for one checkout: ``engine_ceiling.py --before CHECKOUT`` runs this
script with ``PYTHONPATH`` set to another checkout of wsi-seg, and to this one, in turn,
so an older engine is measured by the same script on the same machine. It imports the
engine from either layout: the rooms of today (``wsi_seg.inference``) or the flat one of
November 2026 (``wsi_seg.segment``). Prints one JSON line per run.

    python benchmarks/null_model_run.py SLIDE --workers 0 --repeats 3
    PYTHONPATH=/tmp/before python benchmarks/null_model_run.py SLIDE   # another checkout's engine
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import zarr
from torch import nn

try:  # the engine in rooms
    from wsi_seg.inference.allocator import pin_malloc_thresholds
    from wsi_seg.inference.options import SegmentOptions
    from wsi_seg.inference.segment import segment_slide
except ImportError:  # the flat layout (before the rooms)
    from wsi_seg.allocator import pin_malloc_thresholds  # type: ignore[no-redef]
    from wsi_seg.options import SegmentOptions  # type: ignore[no-redef]
    from wsi_seg.segment import segment_slide  # type: ignore[no-redef]
import wsi_seg
from wsi_seg.model import LoadedModel, PatchPrediction, PsclNet, preset_config


class NullNet(nn.Module):
    """A network whose prediction costs nothing: zero activations, all background."""

    def __init__(self, real: nn.Module) -> None:
        super().__init__()
        self.cfg, self.head = real.cfg, real.head

    def predict(self, patches: torch.Tensor, background: Any = None, image_labels: Any = None,
                rules: Any = None) -> PatchPrediction:
        n, _, h, w = patches.shape
        return PatchPrediction(activations=torch.zeros(n, self.cfg.num_classes, h, w),
                               mask=torch.zeros(n, h, w, dtype=torch.uint8))


def null_model(preset: str = "tiny") -> LoadedModel:
    """The null model with the geometry (µm/px, patch size, classes, seeding) of ``preset``."""
    torch.manual_seed(0)
    cfg = preset_config(preset, stage=2)
    return LoadedModel(NullNet(PsclNet(cfg)), cfg, Path("null-model"), "0" * 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reader", default="auto")
    ap.add_argument("--read-threads", type=int, default=None,
                    help="in-process reading threads (default: the engine's own choice; engines with one reading thread ignore it)")
    args = ap.parse_args()
    pin_malloc_thresholds()
    if args.read_threads is not None:
        try:
            import wsi_seg.inference.runtime as runtime
        except ImportError:
            runtime = None
        if runtime is not None and hasattr(runtime, "resolve_read_threads"):
            runtime.resolve_read_threads = lambda workers, cpus: args.read_threads if workers == 0 else 1
    model = null_model()
    options = SegmentOptions(device="cpu", workers=args.workers, reader=args.reader, overwrite=True, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "null.zarr"
        segment_slide(args.slide, out, model, options)  # warm-up
        for _ in range(args.repeats):
            r = segment_slide(args.slide, out, model, options)
            # what the run did, read back from its provenance (absent in engines that had no such setting)
            inference = zarr.open_group(str(r.out), mode="r").attrs.get("wsi_seg", {}).get("inference", {})
            print(json.dumps({"engine": str(Path(wsi_seg.__file__).parent.parent), "patches": r.patches_run,
                              "whole_s": r.seconds, "loop_s": r.timings["inference"],
                              "reader_workers": inference.get("reader_workers"),
                              "read_threads": inference.get("read_threads")}), flush=True)


if __name__ == "__main__":
    main()
