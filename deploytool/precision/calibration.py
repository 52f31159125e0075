"""Calibration data for int8: real samples from a folder, or seeded ones with a warning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeploytoolError
from ..tensors import TensorSpec
from ..verify.inputs import make_inputs, read_input, read_inputs_dir

Feed = dict[str, np.ndarray]
SEEDED_SAMPLES = 8
SEEDED_WARNING = ("int8 was calibrated on {n} seeded random samples, not on data like the "
                  "model's: pass --calibrate DIR with real inputs before trusting its accuracy")


@dataclass
class Calibration:
    """The samples that calibrate the activations' int8 ranges, and where they came from."""

    samples: list[Feed]
    source: str
    seeded: bool  # random data: the log and the manifest warn that real data is needed

    def warning(self) -> str | None:
        return SEEDED_WARNING.format(n=len(self.samples)) if self.seeded else None


def calibration_samples(specs: list[TensorSpec], folder: Path | None, seed: int = 0,
                        ranges: dict | None = None, model_ranges: dict | None = None
                        ) -> Calibration:
    """Read (or make) the calibration samples.

    ``folder`` holds one sub-folder per sample with ``<input name>.npy`` for each input; a
    model of one input may instead have one ``.npy`` file per sample. None means
    SEEDED_SAMPLES seeded random samples (and a warning that real data is needed).
    """
    names = [s.name for s in specs]
    if folder is None:
        samples = [dict(zip(names, make_inputs(specs, seed + i, ranges or {}, None,
                                               model_ranges), strict=True))
                   for i in range(SEEDED_SAMPLES)]
        return Calibration(samples, f"{SEEDED_SAMPLES} seeded random samples (seed {seed})",
                           True)
    if not folder.is_dir():
        raise DeploytoolError(f"--calibrate {folder} is not a folder",
                              "Pass a folder of .npy samples (see deploytool compile --help)")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    files = sorted(folder.glob("*.npy"))
    if subfolders:
        samples = [dict(zip(names, read_inputs_dir(p, specs), strict=True))
                   for p in subfolders]
    elif files and len(specs) == 1:
        samples = [{names[0]: read_input(f, specs[0])} for f in files]
    else:
        raise DeploytoolError(f"--calibrate {folder} has no samples",
                              "Put one folder per sample in it, each with <input>.npy for "
                              "every input (a model of one input: one .npy file per sample)")
    return Calibration(samples, f"{len(samples)} samples from {folder}", False)

