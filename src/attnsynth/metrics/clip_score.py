"""CLIP similarities of the Attend-and-Excite evaluation protocol (full prompt, minimum object, BLIP caption).

What Chefer et al.'s Attend-and-Excite reports (``metrics/compute_clip_similarity.py`` and
``metrics/blip_captioning_and_clip_similarity.py`` in yuval-alaluf/Attend-and-Excite), computed
with 🤗 transformers instead of OpenAI's ``clip`` package and LAVIS, from local directories:

* text features of a prompt: the prompt put into each of the 80 ImageNet templates (after
  ``"a a" → "a"`` and ``"the a" → "a"``), each embedding L2-normalised, averaged, normalised again;
* image features: CLIP's image embedding, L2-normalised;
* **full-prompt similarity** = cos(image, text(prompt));
* **minimum-object similarity** = min(cos(image, text(half₁)), cos(image, text(half₂))), the
  prompt split on ``" and "`` (else ``" with "``) — parts 0 and 1;
* **text–text similarity** = cos(CLIP-text(caption), text(prompt)), the caption from a BLIP
  captioner and embedded *without* templates, as the authors do.

The authors' numbers use OpenAI CLIP ViT-B/16 (``openai/clip-vit-base-patch16`` is the same
weights for transformers) and LAVIS ``blip_caption``/``base_coco`` (transformers:
``Salesforce/blip-image-captioning-base``), decoded as LAVIS does by default: prompt
``"a picture of "`` (stripped from the caption), 3 beams, 10–30 tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["BlipCaptioner", "ClipScorer", "IMAGENET_TEMPLATES", "split_prompt", "template_texts"]

#: The 80 ImageNet prompt templates of OpenAI CLIP (``notebooks/Prompt_Engineering_for_ImageNet.ipynb``,
#: MIT licence), which the A&E metrics average text features over.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)


def split_prompt(prompt: str) -> tuple[str, str]:
    """The prompt's two object phrases: split on ``" and "``, else on ``" with "`` (first two parts)."""
    for separator in (" and ", " with "):
        if separator in prompt:
            parts = prompt.split(separator)
            return parts[0], parts[1]
    raise ValueError(f"prompt {prompt!r} has neither ' and ' nor ' with '; the minimum-object similarity needs two object phrases")


def template_texts(prompt: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """``prompt`` in every template, with the authors' clean-up of doubled articles."""
    return [template.format(prompt).replace("a a", "a").replace("the a", "a") for template in templates]


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    """CLIP text and image embeddings for the A&E similarities (``transformers`` CLIPModel + CLIPProcessor)."""

    def __init__(self, model: Any, processor: Any, *, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_directory(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "ClipScorer":
        """Load a local CLIP directory (e.g. a download of ``openai/clip-vit-base-patch16``), offline."""
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--clip {path}: no config.json there; expected a local transformers CLIP directory "
                                    "(e.g. a download of openai/clip-vit-base-patch16)")
        model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        return cls(model, CLIPProcessor.from_pretrained(path, local_files_only=True), device=device)

    @torch.no_grad()
    def text_features(self, prompt: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
        """Template-averaged, normalised text feature ``[D]`` of ``prompt`` (cached)."""
        key = "\n".join([prompt, *templates])
        if key not in self._cache:
            tokens = self.processor.tokenizer(template_texts(prompt, templates), padding=True, truncation=True, return_tensors="pt").to(self.device)
            each = _normalise(_features(self.model.get_text_features(**tokens)).float())  # [templates, D]
            self._cache[key] = _normalise(each.mean(dim=0))
        return self._cache[key]

    @torch.no_grad()
    def caption_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text features ``[N, D]`` of plain texts (captions; no templates)."""
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _normalise(_features(self.model.get_text_features(**tokens)).float())

    @torch.no_grad()
    def image_features(self, images: Sequence[Any]) -> torch.Tensor:
        """Normalised image features ``[N, D]`` of PIL images."""
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
        return _normalise(_features(self.model.get_image_features(pixel_values=pixels)).float())

    def similarities(self, prompt: str, images: Sequence[Any]) -> dict[str, list[float]]:
        """Per image: ``full_text``, ``first_half``, ``second_half`` and ``min_object`` cosine similarities."""
        first, second = split_prompt(prompt)
        image = self.image_features(images)  # [N, D]
        full, a, b = (image @ self.text_features(t) for t in (prompt, first, second))  # [N] each
        return {"full_text": full.tolist(), "first_half": a.tolist(), "second_half": b.tolist(),
                "min_object": torch.minimum(a, b).tolist()}

    def text_text(self, prompt: str, captions: Sequence[str]) -> list[float]:
        """Per caption: cos(CLIP-text(caption), template-averaged text(prompt))."""
        return (self.caption_features(captions) @ self.text_features(prompt)).tolist()


class BlipCaptioner:
    """BLIP image captioning as LAVIS ``blip_caption`` decodes by default (prompt stripped, 3 beams, 10–30 tokens)."""

    PROMPT = "a picture of "

    def __init__(self, model: Any, processor: Any, *, device: str | torch.device = "cpu",
                 num_beams: int = 3, max_length: int = 30, min_length: int = 10) -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)
        self.num_beams, self.max_length, self.min_length = num_beams, max_length, min_length

    @classmethod
    def from_directory(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "BlipCaptioner":
        """Load a local BLIP captioning directory (e.g. ``Salesforce/blip-image-captioning-base``), offline."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--blip {path}: no config.json there; expected a local transformers BLIP captioning directory "
                                    "(e.g. a download of Salesforce/blip-image-captioning-base)")
        model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
        return cls(model, BlipProcessor.from_pretrained(path, local_files_only=True), device=device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> list[str]:
        """One caption per PIL image, without the ``"a picture of"`` prompt."""
        rgb = [im.convert("RGB") for im in images]
        inputs = self.processor(images=rgb, text=[self.PROMPT] * len(rgb), return_tensors="pt").to(self.device)
        ids = self.model.generate(**inputs, num_beams=self.num_beams, max_length=self.max_length, min_length=self.min_length)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        prompt = self.PROMPT.strip()
        return [t.strip()[len(prompt):].strip() if t.strip().startswith(prompt) else t.strip() for t in texts]
