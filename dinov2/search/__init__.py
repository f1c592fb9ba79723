"""Archive search: a binary-code index of an image archive, its on-disk build, a search service and a CLI.

- ``index``: ``BinaryIndex``, exact k-NN in Hamming space (flat scan or multi-index hashing) and its file;
- ``kernels``: the numba kernels of the index;
- ``archive``: an image folder encoded by a teacher into an index directory (resumable build, search);
- ``service``: the HTTP service and web page over an index directory;
- ``cli``: the ``build`` / ``search`` / ``serve`` command line (``python -m dinov2.search``).
"""

from .index import BinaryIndex, IndexFormatError

__all__ = ["BinaryIndex", "IndexFormatError"]
