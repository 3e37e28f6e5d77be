"""What an export asks for, checked before torch is imported: the format, the quantization,
the output directory and the packages the format needs. A wrong ``--out`` or a missing extra
is said in about a second, not after the seconds of importing torch and loading the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vitsearch.errors import ConfigError
from vitsearch.model.checkpoint import MANIFEST_FILE
from vitsearch.model.exported.onnx_backend import INSTALL_HINT
from vitsearch.model.exported.openvino_backend import OPENVINO_INSTALL_HINT

FORMATS = {"onnx": "ONNX", "openvino": "OpenVINO"}  # --format -> its name in messages
QUANTIZATIONS = ("int8",)
# the ONNX graph is made by torch.onnx (which needs onnxscript) and verified by ONNX Runtime;
# an OpenVINO IR is converted from it, its int8 weights compressed by NNCF
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
OPENVINO_PACKAGES = ("openvino", "nncf")  # nncf only for int8


def check_export_request(out: Path, fmt: str, quantize: str | None) -> None:
    """Refuse, with one line, an export that could not be made or written."""
    check_format(fmt, quantize)
    check_out(out)
    packages = ONNX_PACKAGES
    if fmt == "openvino":
        openvino = OPENVINO_PACKAGES if quantize else OPENVINO_PACKAGES[:1]
        packages = (*openvino, *ONNX_PACKAGES)
    missing = next((name for name in packages if importlib.util.find_spec(name) is None), None)
    if missing is not None:
        hint = OPENVINO_INSTALL_HINT if fmt == "openvino" else INSTALL_HINT
        raise ConfigError(f"{FORMATS[fmt]} export needs the {missing} package; {hint}")


def check_format(fmt: str, quantize: str | None) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ConfigError(
            f"--out {out} is not empty and holds no vitsearch export; give a new or empty directory"
        )
