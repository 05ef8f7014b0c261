"""Metrics: PSNR, SSIM, LPIPS, batch matching, label accuracy, and :func:`evaluate`."""

from fedleak.metrics.evaluate import Evaluation, ImageScore, evaluate
from fedleak.metrics.image import psnr, ssim
from fedleak.metrics.lpips import LPIPS, load_lpips, lpips_scorers
from fedleak.metrics.matching import label_accuracy, match_batch

__all__ = ["LPIPS", "load_lpips", "lpips_scorers", "Evaluation", "ImageScore", "evaluate", "label_accuracy", "match_batch", "psnr", "ssim"]
