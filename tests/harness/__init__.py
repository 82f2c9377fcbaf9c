"""Test infrastructure, used by tools/ too: the fake model, Lambda events and runtime doubles, servers and processes."""
