"""Metrics: PSNR, SSIM, batch matching, label accuracy, and :func:`evaluate`."""

from fedleak.metrics.evaluate import Evaluation, ImageScore, evaluate
from fedleak.metrics.image import psnr, ssim
from fedleak.metrics.matching import label_accuracy, match_batch

__all__ = ["Evaluation", "ImageScore", "evaluate", "label_accuracy", "match_batch", "psnr", "ssim"]
