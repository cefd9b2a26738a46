"""Plain helpers the tests share: paths, the fake clock, ledger readers, the known farm
state, the Fly end-to-end runners. Fixtures live in ``tests/conftest.py``; no test module
imports another test module."""
