"""The command line, one module per group of commands; each registers on ``root.app``.

Commands only parse flags, call the core, print, and turn a WhisperfarmError into one red
line and a non-zero exit (``root.friendly``). No SQL, HTTP or ffmpeg here.

Commands import what they call inside their own bodies, not at the top of their module:
``whisperfarm --help`` or ``whisperfarm status`` then never loads the coordinator, the Fly
client or the model code it does not use, and starts in a fraction of the time. Those
imports dodge no cycle: the core never imports the CLI.
"""

from __future__ import annotations

# Importing the command modules registers their commands on ``app``.
from whisperfarm.cli import episodes, fleet, run, status  # noqa: F401
from whisperfarm.cli.root import app

__all__ = ["app"]
