"""synthesis-core: the building blocks shared by the text-to-image and text-to-video packages."""
from synthesis_core.__about__ import __version__

__all__ = ["__version__"]
