"""The Lambda entry point named by the template (`chat.handler.handler`), and the app for uvicorn.

`handler` is the Mangum instance itself, not a wrapper: the streaming runtime loop
uses its `.infer()` and `.app`; plain (buffered) invocations simply call it.
"""

from mangum import Mangum

from . import snapstart
from .app import create_app

app = create_app()
handler = Mangum(app, lifespan="off")
snapstart.register(app.state.upstream, app.state.store)
