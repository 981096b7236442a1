"""Imagen: cascading text-to-image and text-to-video diffusion, in PyTorch, on synthesis-core.

```
from imagen_pytorch import Unet, Imagen, ImagenTrainer

imagen = Imagen(unets=(Unet(dim=32), Unet(dim=32)), image_sizes=(64, 256))
trainer = ImagenTrainer(imagen)
```
"""
from imagen_pytorch.__about__ import __version__
from imagen_pytorch.configs import (
    ElucidatedImagenConfig,
    ImagenConfig,
    ImagenTrainerConfig,
    load_imagen_from_checkpoint,
)
from imagen_pytorch.elucidated import ElucidatedImagen
from imagen_pytorch.imagen import Imagen
from imagen_pytorch.trainer import ImagenTrainer
from imagen_pytorch.unet import BaseUnet64, NullUnet, SRUnet256, SRUnet1024, Unet
from imagen_pytorch.unet3d import Unet3D
from synthesis_core.checkpoint import register_loadable

# The classes a saved config.json may name (`from_pretrained`, `load_model_from_folder`): nothing else is ever
# built from a file. The presets and Unet3D pass their **kwargs on to Unet, so a config may give Unet's arguments.
register_loadable(Unet)
register_loadable(NullUnet)
register_loadable(BaseUnet64, forwards_kwargs_to=Unet)
register_loadable(SRUnet256, forwards_kwargs_to=Unet)
register_loadable(SRUnet1024, forwards_kwargs_to=Unet)
register_loadable(Unet3D, forwards_kwargs_to=Unet)
register_loadable(Imagen)
register_loadable(ElucidatedImagen)

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
    "ImagenTrainerConfig",
    "load_imagen_from_checkpoint",
    "__version__",
]
