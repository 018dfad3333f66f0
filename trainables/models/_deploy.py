"""The graph a user deploys: uint8 RGB photos in, class probabilities out, as
``torch.export`` and ONNX programs.

Export (``tuner export``) writes these files; the search times the same graph
(:mod:`trainables.models._latency`), so the latency a leaderboard shows is that of the
model the user ships.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# TorchScript, ONNX and eager outputs may differ by float rounding, never by more.
TRACE_ATOL = 1e-4


class Deployed(torch.nn.Module):
    """``model`` with what can live in the graph: uint8 RGB photos in, probabilities out."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() / 255.0 - self.mean) / self.std
        return self.model(x).float().softmax(1)


def random_photos(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` uint8 photos of noise, ``size`` px square (probes for checking a graph)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def export_program(deployed: Deployed, size: int) -> torch.export.ExportedProgram:
    """``deployed`` as a ``torch.export`` program of any batch size, checked against it."""
    batch = {"image": {0: torch.export.Dim("batch", min=1, max=4096)}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(deployed, (random_photos(2, size, 0),), dynamic_shapes=batch)
        probe = random_photos(3, size, 1)
        if not torch.allclose(program.module()(probe), deployed(probe), atol=TRACE_ATOL):
            raise RuntimeError("the torch.export program disagrees with the model")
    return program


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session of ``path`` (``threads`` 0: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def write_onnx(
    program: torch.export.ExportedProgram, deployed: Deployed, size: int, path: Path
) -> None:
    """``program`` (of ``deployed``) as one ONNX file, checked with onnxruntime."""
    import contextlib
    import io

    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            program, (), str(path), input_names=["image"], output_names=["probabilities"],
            dynamo=True, external_data=False,
        )  # fmt: skip
        probe = random_photos(3, size, 1)
        answer = torch.from_numpy(onnx_session(path).run(None, {"image": probe.numpy()})[0])
        if not torch.allclose(answer, deployed(probe), atol=TRACE_ATOL):
            raise RuntimeError(f"the ONNX export {path.name} disagrees with the model")
