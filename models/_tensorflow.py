"""TensorFlow and TensorFlow Recommenders, imported with Keras 2.

Every module of :mod:`models` gets ``tf`` and ``tfrs`` from here instead of importing them
directly: this module sets ``TF_USE_LEGACY_KERAS=1`` (see :mod:`models`) immediately before the
first TensorFlow import, which also holds when :mod:`models` is imported as a namespace package
(an editable install made before ``models/__init__.py`` existed) or from a notebook.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tensorflow_recommenders as tfrs

__all__ = ["tf", "tfrs"]
