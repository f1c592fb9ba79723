"""``python -m dinov2.eval.retrieval ...``: the retrieval tool."""

import sys

from dinov2.eval.retrieval.options import main

sys.exit(main())
