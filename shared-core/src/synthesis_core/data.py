"""Deprecated alias of `synthesis_core.folders` (the datasets over folders of images and videos), kept so that
code written against synthesis-core 0.2 keeps importing; new code imports `synthesis_core.folders`."""

import sys

from synthesis_core import folders

sys.modules[__name__] = folders  # the same module object: every name, private ones included
