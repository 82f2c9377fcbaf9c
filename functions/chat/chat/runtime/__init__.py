"""Our own Lambda runtime loop, so one function can stream or buffer per invocation.

The managed Python runtime cannot stream a response; this loop (started by the
`lambda-exec-wrapper` script) speaks the Runtime API itself: buffered answers
go through `Mangum(app)` as usual, streamed ones reuse mangum's event parsing
and write the ASGI response as it is produced. See lambda-streaming-runtime.md.
"""
