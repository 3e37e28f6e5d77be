"""The benchmarks' model options and checkpoints: --batch-size and --threads with vitsearch's
defaults, settings for a checkpoint, and the seeded random ViT-B/16 (the real FLOPs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitsearch.config import Settings, load_settings


def add_model_options(
    parser: argparse.ArgumentParser, threads_help: str = "torch intra-op threads"
) -> None:
    """--batch-size and --threads, with vitsearch's defaults (shared by the benchmarks)."""
    defaults = Settings()
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"images per forward pass (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help=f"{threads_help} (default {defaults.threads})",
    )


def checkpoint_settings(checkpoint: Path, args: argparse.Namespace, **flags) -> Settings:
    return load_settings(
        environ={},  # VITSEARCH_* of the shell must not pin the benchmark's backend
        model=str(checkpoint),
        device="cpu",
        batch_size=args.batch_size,
        threads=args.threads,
        **flags,
    )


def save_vit_b16(directory: Path) -> Path:
    """A seeded random ViT-B/16 (ViTConfig defaults, 1000 labels) plus its processor config."""
    import torch
    import transformers
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    id2label = {i: f"class_{i:03d}" for i in range(1000)}
    config = ViTConfig(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessorPil(
        do_resize=True,
        size={"height": 224, "width": 224},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(directory)
    return directory
