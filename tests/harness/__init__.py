"""Test infrastructure: the fake model, Lambda event and runtime doubles, servers and processes the tests start."""
