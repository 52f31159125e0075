"""Import torchvision on a CPU-only torch: define the NMS operators its CUDA wheel cannot load."""

from __future__ import annotations

import sys

_LIBRARIES: list = []  # keeps the torch.library registrations alive


def _nms(dets, scores, iou_threshold: float):
    """Greedy non-maximum suppression in plain PyTorch (indices of the kept boxes, by score)."""
    import torch

    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool)
    keep = []
    for i in scores.argsort(descending=True).tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _define_nms() -> None:
    import torch

    library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.impl(name, _nms, "CompositeExplicitAutograd")
    _LIBRARIES.append(library)


def _has_nms() -> None:
    """Stands in for torchvision's check of its compiled extension, which defines nms."""


def import_torchvision():
    """``import torchvision``; where its compiled extension cannot load (the PyPI wheel is a CUDA
    build, and on a CPU torch the import fails for want of ``torchvision::nms``), define
    ``torchvision::nms`` and ``qnms`` in plain PyTorch first and import again.

    Returns
    -------
    module
        torchvision.
    """
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::nms" not in str(err) or _LIBRARIES:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package
        _define_nms()
        import torchvision
        import torchvision.ops.boxes

        # torchvision.ops.nms checks for the compiled extension before calling the operator.
        torchvision.ops.boxes._assert_has_ops = _has_nms
    return torchvision
