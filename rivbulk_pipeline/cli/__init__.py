"""The `rivbulk` command (`main`): one module per group of subcommands.

main.py parses the arguments and dispatches; dev.py (`rivbulk dev`), load.py (`rivbulk load`),
demo.py (`rivbulk demo` and the demo data), inventory.py (`rivbulk inventory`), corrections.py
(`rivbulk retry`, `lost`, `where`).
"""

from .main import main

__all__ = ["main"]
