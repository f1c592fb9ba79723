"""Retrieval evaluation: the Hamming-ranking metric library is re-exported here."""

from . import hashing
from .hashing import *  # noqa: F403  (the names of hashing.__all__)

__all__ = list(hashing.__all__)
