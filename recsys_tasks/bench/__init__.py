"""The benchmarks, one module or subpackage each: ``scoring`` (``bench``), ``store_load`` (``bench-store``),
``pipeline`` (``bench-pipeline``, with ``pipeline_report`` and ``training``); ``redis_load`` is shared.
"""
