"""TIAToolbox's ``SemanticSegmentor`` (2.x) against ``segment_slide``: same slide, model,
µm/px, patch size, stride, batch size, precision and reader workers, side by side.

The wsi_seg network is wrapped as a TIAToolbox ``ModelABC`` whose ``infer_batch``
returns softmax probabilities (background + classes, the model's background seed
applied as ``PsclNet.predict`` applies it), centre-cropped to the stride, so
TIAToolbox's merge (average where outputs overlap) has no overlaps to average and its
argmax equals our centre-crop stitching. Both read 224-px patches at the model's µm/px
with 16 px of context on each side (stride 192): the same patch grid.

Tissue: by default TIAToolbox gets a mask that selects exactly the patches ``segment``
runs (``--mask ours``; its wall time then excludes tissue detection, ours includes it);
``--mask tia`` lets it find tissue itself (Otsu on a thumbnail), so the patch counts
differ and patches/s is the figure to compare. TIAToolbox writes a zarr of the argmax;
we write an OME-Zarr pyramid of per-class activations plus the mask.

Needs a Python environment with tiatoolbox 2.x and this project importable. tiatoolbox
2.1.3 pins torch<2.13, so a plain ``pip install tiatoolbox`` next to torch 2.14.1 falls
back to tiatoolbox 1.3.2 (which does not import); install 2.1.3 without its torch pins::

    python3 -m venv /tmp/tia_venv
    /tmp/tia_venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tia_venv/bin/pip download --no-deps tiatoolbox==2.1.3 -d /tmp/tia_whl
    unzip -p /tmp/tia_whl/tiatoolbox-*.whl tiatoolbox-2.1.3.dist-info/METADATA > /tmp/tia_meta.txt
    sed -n 's/^Requires-Dist: //p' /tmp/tia_meta.txt | grep -v 'extra ==' | grep -v '^torch' > /tmp/tia_reqs.txt
    /tmp/tia_venv/bin/pip install -r /tmp/tia_reqs.txt safetensors "setuptools>=77" ome-zarr==0.18.0
    /tmp/tia_venv/bin/pip install --no-deps /tmp/tia_whl/tiatoolbox-2.1.3-py3-none-any.whl
    /tmp/tia_venv/bin/pip install --no-deps -e /work/main pytorch-metric-learning simplejpeg

    /tmp/tia_venv/bin/python benchmarks/tiatoolbox_compare.py --work /tmp/wsi_bench
    /tmp/tia_venv/bin/python benchmarks/tiatoolbox_compare.py --quick
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_model,
    demo_slide,
    engine_precision,
    print_speeds,
    read_result_mask,
    slide_arguments,
    work_folder,
)

from wsi_seg.inference.allocator import pin_malloc_thresholds  # noqa: E402
from wsi_seg.inference.runtime import autocast  # noqa: E402
from wsi_seg.inference.segment import SegmentOptions, plan, segment_slide  # noqa: E402
from wsi_seg.inference.tiling import TileGrid  # noqa: E402
from wsi_seg.model import LoadedModel, PsclNet  # noqa: E402
from wsi_seg.result.format import read_provenance
from wsi_seg.slide.slide import Slide  # noqa: E402
from wsi_seg.slide.tissue import BackgroundSeedParams  # noqa: E402


def tia_model(net: PsclNet, margin_px: int, precision: str) -> "ModelABC":  # noqa: F821
    """The wsi_seg network as a TIAToolbox model: NHWC uint8 patches in, NHWC
    probabilities of the centre ``P - 2·margin`` square out."""
    from tiatoolbox.models.architecture.utils import argmax_last_axis
    from tiatoolbox.models.models_abc import ModelABC

    class WsiSegModel(ModelABC):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.background_seed = BackgroundSeedParams.of_model(net.cfg)
            self.margin = margin_px
            self.precision = precision
            self.class_dict = {0: "background", **{i + 1: n for i, n in enumerate(net.cfg.class_names)}}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @staticmethod
        def postproc(image: np.ndarray) -> np.ndarray:
            return argmax_last_axis(image=image)  # probabilities → class index, as TIAToolbox's UNet

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
            model = getattr(model, "module", model)
            rgb = batch_data.numpy() if isinstance(batch_data, torch.Tensor) else np.asarray(batch_data)
            rgb = rgb.astype(np.uint8, copy=False)
            dev = torch.device(device)
            images = torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))).to(dev)
            bkg = None
            if model.background_seed.enabled:
                bkg = torch.from_numpy(np.stack([model.background_seed.seed(r) for r in rgb])).to(dev)
            model.net.eval()
            with torch.inference_mode(), autocast(dev, model.precision):
                pred = model.net.predict(images, bkg)
            acts = pred.activations.float()
            probs = torch.cat([(1.0 - acts.sum(1, keepdim=True)).clamp_(0, 1), acts], dim=1)
            if bkg is not None:  # seeded pixels are background, as in the engine's mask
                probs = torch.where(bkg[:, None], torch.zeros_like(probs), probs)
                probs[:, 0][bkg] = 1.0
            m = model.margin
            crop = probs[:, :, m : probs.shape[2] - m, m : probs.shape[3] - m] if m else probs
            return crop.permute(0, 2, 3, 1).cpu().numpy()

    return WsiSegModel()


def patch_selection_mask(grid: TileGrid, tissue_patches: np.ndarray) -> np.ndarray:
    """(H, W) bool at the model µm/px that selects exactly the ``tissue_patches`` in
    TIAToolbox (any mask pixel inside a patch's input window selects it): the centre of
    each owned square, kept clear of the neighbours' context margins."""
    mask = np.zeros(grid.out_shape, bool)
    s, pad = grid.stride_px, grid.margin_px + 1
    for i, j in zip(*np.nonzero(tissue_patches)):
        mask[i * s + pad : (i + 1) * s - pad, j * s + pad : (j + 1) * s - pad] = True
    return mask


def run_tiatoolbox(slide_path: Path, model: LoadedModel, args: argparse.Namespace, out_dir: Path,
                   mask: np.ndarray | None) -> tuple[np.ndarray, int, float]:
    """(argmax mask at the model µm/px, patches run, wall s) of SemanticSegmentor."""
    import zarr
    from tiatoolbox import rcParam
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor

    rcParam["torch_compile_mode"] = "disable"  # eager, like segment_slide
    cfg = model.config
    p = cfg.patch_size_px
    s = p - args.overlap
    res = [{"units": "mpp", "resolution": cfg.mpp}]
    io = IOSegmentorConfig(input_resolutions=res, output_resolutions=res, patch_input_shape=(p, p),
                           patch_output_shape=(s, s), stride_shape=(s, s), save_resolution=res[0])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    t = time.perf_counter()
    engine = SemanticSegmentor(model=tia_model(model.net, args.overlap // 2, args.precision),
                               batch_size=args.batch_size, num_workers=args.workers, device="cpu", verbose=False)
    output = engine.run([slide_path], masks=[mask] if mask is not None else None, patch_mode=False,
                        ioconfig=io, save_dir=out_dir, overwrite=True, output_type="zarr", device="cpu",
                        auto_get_mask=mask is None)
    seconds = time.perf_counter() - t
    path = output[slide_path] if isinstance(output, dict) else output
    pred = np.asarray(zarr.open(str(path), mode="r")["predictions"])
    n = len(engine.output_locations) if engine.output_locations is not None else -1
    return pred.astype(np.uint8), n, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slide_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="reader workers, both engines (default: 0, the engine's CPU default)")
    ap.add_argument("--precision", default="auto", help="both engines (our autocast in the wrapped model)")
    ap.add_argument("--mask", choices=["ours", "tia"], default="ours", help="tissue selection for TIAToolbox")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    malloc = pin_malloc_thresholds()  # as the wsi-seg CLI runs (wsi_seg.inference.allocator)
    args.overlap = SegmentOptions().overlap_px
    if args.quick:
        args.size, args.repeats = 3072, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import tiatoolbox

    # tiatoolbox sets the root logger to INFO on import; keep its warnings, drop per-run info. Its
    # warning "image mode is set to 'feature'" concerns the ndarray tissue mask and is harmless.
    logging.getLogger().setLevel(logging.WARNING)
    with work_folder(args.work) as work:
        slide = demo_slide(work, args.size, args.tissue_fraction)
        print(f"slide {slide.path.name}: {'reused' if slide.reused else f'generated in {slide.seconds:.1f} s'}")
        model, what = benchmark_model(args.checkpoint, args.preset, work)
        with Slide(slide.path) as sl:
            grid, tissue_patches = plan(sl, model.config.mpp, model.config.patch_size_px, SegmentOptions())
        mask = patch_selection_mask(grid, tissue_patches) if args.mask == "ours" else None
        opts = SegmentOptions(device="cpu", batch_size=args.batch_size, workers=args.workers,
                              precision=args.precision, overwrite=True, progress=False)
        tia_s, eng_s = [], []
        for rep in range(args.repeats):
            pred_t, n_t, sec = run_tiatoolbox(slide.path, model, args, work / "tia_out", mask)
            tia_s.append(sec)
            res = segment_slide(slide.path, work / "tia_engine_out.zarr", model, opts)
            eng_s.append(res.seconds)
            print(f"  repeat {rep + 1}: TIAToolbox {n_t / sec:.1f} p/s, engine {res.patches_per_second:.1f} p/s",
                  flush=True)
        mask_e = read_result_mask(res.out)
        inference = read_provenance(res.out)["inference"]
    h, w = min(pred_t.shape[0], mask_e.shape[0]), min(pred_t.shape[1], mask_e.shape[1])
    if pred_t.shape != mask_e.shape:
        print(f"note: output shapes differ (TIAToolbox {pred_t.shape}, ours {mask_e.shape}); compared on {h}×{w}")
    owned = np.kron(tissue_patches, np.ones((grid.stride_px, grid.stride_px), bool))[:h, :w]
    same = pred_t[:h, :w] == mask_e[:h, :w]
    t, e = print_speeds(
        f"TIAToolbox {tiatoolbox.__version__}, torch {torch.__version__}; {args.size}² px demo slide "
        f"(tissue {args.tissue_fraction:g}), {what}, {model.config.patch_size_px}-px patches, stride "
        f"{grid.stride_px}, {model.config.mpp} µm/px, batch {args.batch_size}, {args.workers} reader worker(s), "
        f"precision {args.precision} = {engine_precision('cpu', args.precision)}, {torch.get_num_threads()} "
        f"torch threads (segment_slide: {inference['streams']} stream(s) of {inference['torch_threads']}), "
        f"best of {args.repeats}, mask {args.mask}; malloc (both, one process) {malloc}",
        [("TIAToolbox SemanticSegmentor", n_t, tia_s), ("segment_slide", res.patches_run, eng_s)])
    print(f"mask agreement: {100 * same[owned].mean():.2f} % of the pixels our tissue patches own, "
          f"{100 * same.mean():.2f} % of all output pixels")
    print(f"ratio segment_slide/TIAToolbox patches/s = {e / t:.2f}")


if __name__ == "__main__":
    main()
