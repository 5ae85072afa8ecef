"""`python -m imgsim_fast ...` is the `imgsim` command."""
import sys

from .cli import main

sys.exit(main())
