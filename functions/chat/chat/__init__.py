"""Streams an OpenAI-compatible model's answer as Server-Sent Events, on Lambda or uvicorn."""
