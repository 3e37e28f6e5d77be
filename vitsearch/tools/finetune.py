"""``vitsearch finetune``: the model trained on one sub-folder of example photos per label."""

from __future__ import annotations

from pathlib import Path

from vitsearch.config import Settings


def finetune_model(
    settings: Settings, data_dir: Path, out_dir: Path, progress: bool = False, **options
):
    """Fine-tune ``settings.model`` on the labelled sub-folders of ``data_dir`` into ``out_dir``."""
    from vitsearch.model.pytorch.finetune import FinetuneOptions, finetune  # torch imports late

    given = {name: value for name, value in options.items() if value is not None}
    return finetune(
        settings.model,
        data_dir,
        out_dir,
        FinetuneOptions(**given),
        threads=settings.threads,
        device=settings.device,
        precision=settings.precision,
        decode_workers=settings.decode_workers,
        progress=progress,
    )
