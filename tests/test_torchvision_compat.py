"""torchvision on a CPU torch: its NMS operator, defined in plain PyTorch where needed."""

from __future__ import annotations

import torch

from deploytool.testing.torchvision_compat import import_torchvision


def test_torchvision_imports_and_nms_keeps_the_best_boxes():
    torchvision = import_torchvision()
    assert torchvision.models.resnet18 is not None
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.8, 0.9, 0.7])
    keep = torch.ops.torchvision.nms(boxes, scores, 0.5)
    assert keep.tolist() == [1, 2]  # box 0 overlaps the better box 1 by IoU 0.68
