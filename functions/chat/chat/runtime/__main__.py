"""`python -m chat.runtime`: the runtime loop, as lambda-exec-wrapper starts it with the managed interpreter."""

from .loop import main

main()
