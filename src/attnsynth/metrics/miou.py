"""Mean intersection over union of label maps.

Reference definition: the confusion-matrix mIoU of the semantic-segmentation literature (as used
by SPADE/OASIS evaluations with a pretrained segmenter): IoU_c = TP_c / (TP_c + FP_c + FN_c),
accumulated over the whole set, averaged over classes that occur in the prediction or the truth.
Pixels whose truth equals ``ignore_index`` are skipped.
"""

from __future__ import annotations

import torch


class MeanIoU:
    """Streaming confusion matrix over batches of [B, H, W] long label maps."""

    def __init__(self, *, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)  # [truth, prediction]

    def update(self, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        """Add one batch of predicted and true label maps (same shape)."""
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ in shape")
        prediction = prediction.detach().long().flatten().cpu()
        truth = truth.detach().long().flatten().cpu()
        keep = truth != self.ignore_index if self.ignore_index is not None else torch.ones_like(truth, dtype=torch.bool)
        prediction, truth = prediction[keep], truth[keep]
        for name, values in (("prediction", prediction), ("truth", truth)):
            if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{name} label values must lie in [0, {self.num_classes - 1}], got [{int(values.min())}, {int(values.max())}]")
        flat = truth * self.num_classes + prediction
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).view(self.num_classes, self.num_classes).double()

    def per_class(self) -> torch.Tensor:
        """IoU per class [num_classes]; NaN for classes absent from both prediction and truth."""
        tp = self.confusion.diagonal()
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> float:
        """Mean IoU over the classes that occur."""
        values = self.per_class()
        values = values[~values.isnan()]
        return float(values.mean()) if values.numel() else float("nan")


def mean_iou(prediction: torch.Tensor, truth: torch.Tensor, *, num_classes: int, ignore_index: int | None = None) -> float:
    """One-shot mIoU of two label-map tensors of the same shape."""
    metric = MeanIoU(num_classes=num_classes, ignore_index=ignore_index)
    metric.update(prediction, truth)
    return metric.compute()
