"""The networks: the backbone registry (``_backbones``), models built, frozen and run
part by part (``_models``), the compute precision and device (``_precision``), ONNX
and ``torch.export`` graphs (``_deploy``) and a deployed model's latency (``_latency``)."""

from __future__ import annotations

from trainables.models._backbones import MAX_FREEZE_DEPTH, backbone, names
from trainables.models._deploy import (
    TRACE_ATOL,
    Deployed,
    export_program,
    onnx_session,
    random_photos,
    write_onnx,
)
from trainables.models._latency import CostSpec, deploy_cost
from trainables.models._models import (
    STEM,
    WeightsUnavailableError,
    build_model,
    ensure_pretrained_weights,
    freeze,
    frozen_output_part,
    head,
    normalization,
    params_by_depth,
    pretrained_weights_file,
    run_parts,
    set_train_mode,
    stages,
)
from trainables.models._precision import (
    ComputePolicy,
    choose_precision,
    cpu_has_native_bf16,
    default_device,
    prepare_device,
)

__all__ = [
    "MAX_FREEZE_DEPTH",
    "STEM",
    "TRACE_ATOL",
    "ComputePolicy",
    "CostSpec",
    "Deployed",
    "WeightsUnavailableError",
    "backbone",
    "build_model",
    "choose_precision",
    "cpu_has_native_bf16",
    "default_device",
    "deploy_cost",
    "ensure_pretrained_weights",
    "export_program",
    "freeze",
    "frozen_output_part",
    "head",
    "names",
    "normalization",
    "onnx_session",
    "params_by_depth",
    "prepare_device",
    "pretrained_weights_file",
    "random_photos",
    "run_parts",
    "set_train_mode",
    "stages",
    "write_onnx",
]
