"""``python -m dinov2.eval.retrieval ...``: the retrieval tool."""

import sys

from dinov2.eval.retrieval.tool import main

sys.exit(main())
