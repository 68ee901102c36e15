"""The conformance report of a run and what reads it.

- ``writer``: the pytest plugin that records every test's verdict and figures and writes the report
  (YAML/JSON plus a Markdown summary) at the end of a run.
- ``gate``: the upgrade gate, comparing two reports (``python -m harness.report.gate BEFORE AFTER``).
- ``charts``: the PNG charts linked from the Markdown summary.
- ``estimate``: a kind run's time, priced from a report's operation counts
  (``python -m harness.report.estimate REPORT``).
"""
