"""Fake providers: test doubles that speak a real provider's wire protocol.

They serve the tests, the benchmarks and `meterway demo`; they are never part
of what `meterway serve` runs. The rule, checked by tests/test_layers_fakes.py:
nothing in gateway/ imports fakes except the `demo` and `fake-upstream`
commands (lazily, inside the command), and fakes/ imports nothing from
gateway/, so a fake cannot quietly agree with the code it is meant to test.
"""
