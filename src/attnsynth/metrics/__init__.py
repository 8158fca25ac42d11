"""Image metrics: PSNR/SSIM, FID/KID with pluggable features, mIoU."""
