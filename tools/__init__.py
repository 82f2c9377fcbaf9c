"""Commands people run: serve, smoke test, performance (perf/), cold-path recorder; they import the app's package."""

import sys
from pathlib import Path

# The app's package (functions/chat/chat) is importable as `chat`, as on Lambda, without installing it.
sys.path.append(str(Path(__file__).resolve().parent.parent / "functions" / "chat"))
