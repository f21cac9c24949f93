"""`python -m rivbulk_pipeline.cli`: the `rivbulk` command."""

import sys

from .main import main

sys.exit(main())
