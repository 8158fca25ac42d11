"""``--data toy-faces``: procedurally rendered faces with exact ground truth, made on the fly.

Scene ``i`` of the train split is ``faces.render(seed + i, …)``; the test split uses a disjoint
seed range (``seed + TEST_SEED_OFFSET + i``), so train and test never share a face. The label
set is :data:`~attnsynth.data.labelsets.CELEBAMASK_HQ`, as for real CelebAMask-HQ data.
"""

from __future__ import annotations

from PIL import Image

from attnsynth.data.base import PairDataset
from attnsynth.data.labelsets import CELEBAMASK_HQ

TOY_FACES = "toy-faces"
TEST_SEED_OFFSET = 1_000_000


class ToyFaces(PairDataset):
    """``n`` toy faces rendered at the dataset resolution (cached after the first render)."""

    def __init__(self, *, n: int = 512, resolution: tuple[int, int], split: str = "train", seed: int = 0, **kwargs) -> None:
        if n < 1:
            raise ValueError(f"toy-faces needs n >= 1 scenes, got {n}")
        if split not in ("train", "test"):
            raise ValueError(f"toy-faces split {split!r} is invalid; expected train or test")
        super().__init__(label_set=CELEBAMASK_HQ, resolution=resolution, seed=seed, **kwargs)
        self.n = n
        self.split = split
        self.first_seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
        self._cache: dict[int, tuple[Image.Image, Image.Image]] = {}

    def __len__(self) -> int:
        return self.n

    def scene_seed(self, index: int) -> int:
        """The ``faces.render`` seed of sample ``index``."""
        return self.first_seed + index

    def scene(self, index: int):
        """The full toy scene (``.image``, ``.labels``, ``.record``) of sample ``index``, at the render size."""
        from attnsynth.toyworld import faces

        return faces.render(self.scene_seed(index), max(self.resolution))

    def name(self, index: int) -> str:
        """``face_<seed>``."""
        return f"face_{self.scene_seed(index):07d}"

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """Render (or reuse) scene ``index`` as PIL images."""
        if index not in self._cache:
            scene = self.scene(index)
            self._cache[index] = (Image.fromarray(scene.image), Image.fromarray(scene.labels.astype("uint8")))
        return self._cache[index]
