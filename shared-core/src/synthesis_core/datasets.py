"""Deprecated alias of `synthesis_core.shapes` (the built-in captioned shapes videos and their caption scorer),
kept so that code written against synthesis-core 0.2 keeps importing; new code imports `synthesis_core.shapes`."""

import sys

from synthesis_core import shapes

sys.modules[__name__] = shapes  # the same module object: every name, private ones included
