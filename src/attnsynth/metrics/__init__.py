"""Image metrics, one file per metric: PSNR, SSIM, FID/KID with pluggable features, mIoU."""

from attnsynth.metrics.fid import FID, frechet_distance, load_inception
from attnsynth.metrics.kid import kernel_distance
from attnsynth.metrics.miou import MeanIoU, mean_iou
from attnsynth.metrics.psnr import psnr
from attnsynth.metrics.ssim import ssim

__all__ = ["FID", "MeanIoU", "frechet_distance", "kernel_distance", "load_inception", "mean_iou", "psnr", "ssim"]
