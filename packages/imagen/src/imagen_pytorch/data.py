"""Image datasets for training Imagen (thin wrappers over `synthesis_core.folders`).

```
dataset = Dataset('/path/to/images', image_size=128)                       # -> (3, 128, 128) in [0, 1]
dataset = Dataset('/path/to/images', image_size=128, with_captions=True)   # -> (image, caption) from name.txt
trainer.add_train_dataset(dataset, batch_size=16)
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from synthesis_core.folders import ImageFolderDataset

__all__ = ["Dataset", "IMAGE_EXTS"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "tiff", "webp")


class Dataset(ImageFolderDataset):
    """The images found (recursively) in `folder`, resized and center-cropped to `image_size`, as tensors
    (c, h, w) in [0, 1]; with `with_captions=True`, `(image, caption)` pairs whose captions come from a `name.txt`
    file beside each image (the trainer passes them to Imagen as `texts`). Unreadable files are skipped with a
    warning; a folder without any usable image is an error.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int,
        exts: Sequence[str] = IMAGE_EXTS,
        with_captions: bool = False,
        augment_horizontal_flip: bool = False,
        channels: int = 3,
    ):
        super().__init__(
            folder,
            image_size,
            exts=exts,
            with_captions=with_captions,
            channels=channels,
            augment_horizontal_flip=augment_horizontal_flip,
        )
        if len(self) == 0:
            what = "captioned images (with a name.txt caption file)" if with_captions else "images"
            raise ValueError(f"folder: found no usable {what} with extensions {tuple(exts)} in {folder}")
