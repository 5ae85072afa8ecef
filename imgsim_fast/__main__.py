"""`python -m imgsim_fast ...` is the `imgsim` command."""
import sys

from imgsim_fast.cli.main import main

sys.exit(main())
