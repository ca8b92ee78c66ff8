"""More ``bluegreen`` subcommands, one module per area, each adding ``@app.command()``s to ``cli.app``.

Every module here is imported by ``cli.py``: a new command group is one new file. Commands stay
thin (parse, call the library, render) and use ``cli.guard`` for errors and exit codes.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
