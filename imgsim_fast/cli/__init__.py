"""The `imgsim` command line: `main` parses and dispatches (main.py); catalog.py and explore.py add the
catalog and search/explore subcommands; types.py holds the argument types that refuse bad values early."""
from imgsim_fast.cli.main import main

__all__ = ["main"]
