"""``vitsearch export``: the fp32 model as an ONNX or OpenVINO export, verified against PyTorch."""

from __future__ import annotations

from pathlib import Path

from vitsearch.app import features_of
from vitsearch.config import Settings
from vitsearch.model.checkpoint import check_checkpoint
from vitsearch.model.export_request import check_export_request


def export_model(settings: Settings, out: Path, quantize: str | None = None, fmt: str = "onnx"):
    """Export the fp32 model to ONNX or OpenVINO in ``out``, checked against PyTorch first."""
    # what the export needs, checked before torch is imported and the model loads
    check_export_request(Path(out).expanduser(), fmt, quantize)
    check_checkpoint(settings.model)
    from vitsearch.model import load_embedder
    from vitsearch.model.pytorch.exporter import export_model as export

    features = features_of(settings)
    fp32 = load_embedder(settings.model, threads=settings.threads, features=features)  # cpu fp32
    return export(fp32, out, fmt=fmt, quantize=quantize)
