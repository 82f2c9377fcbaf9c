"""Performance: the benchmark (`make bench`) and the load and fault harness (`make load`), one package.

Both run the app as its own process (tests/harness/app_process.py) against the fake
model (tests/harness/fake_openai.py), read its CPU and memory from /proc, and print
Markdown tables (table.py). `python -m tools.perf bench|load --help` lists the options.
"""
