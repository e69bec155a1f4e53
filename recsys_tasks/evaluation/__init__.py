"""Stage 6: evaluation of the run (``evaluate``), its metrics, the checks of the published lists (``lists``),
the quality gate the load runs (``gate``) and the report for people (``report``).
"""
