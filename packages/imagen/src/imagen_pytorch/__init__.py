"""Imagen: cascading text-to-image and text-to-video diffusion, in PyTorch, on synthesis-core.

```
from imagen_pytorch import Unet, Imagen, ImagenTrainer

imagen = Imagen(unets=(Unet(dim=32), Unet(dim=32)), image_sizes=(64, 256))
trainer = ImagenTrainer(imagen)
```
"""

from imagen_pytorch.__about__ import __version__

# importing configs registers the loadable classes (the only ones a saved config may name)
from imagen_pytorch.configs import (
    ElucidatedImagenConfig,
    ImagenConfig,
    ImagenTrainerConfig,
    NullUnetConfig,
    Unet3DConfig,
    UnetConfig,
    load_imagen_from_checkpoint,
)
from imagen_pytorch.elucidated import ElucidatedImagen
from imagen_pytorch.imagen import Imagen
from imagen_pytorch.trainer import ImagenTrainer
from imagen_pytorch.unet import BaseUnet64, NullUnet, SRUnet256, SRUnet1024, Unet
from imagen_pytorch.unet3d import Unet3D

__all__ = [
    "Unet",
    "Unet3D",
    "NullUnet",
    "BaseUnet64",
    "SRUnet256",
    "SRUnet1024",
    "Imagen",
    "ElucidatedImagen",
    "ImagenTrainer",
    "ImagenConfig",
    "ElucidatedImagenConfig",
    "UnetConfig",
    "Unet3DConfig",
    "NullUnetConfig",
    "ImagenTrainerConfig",
    "load_imagen_from_checkpoint",
    "__version__",
]
