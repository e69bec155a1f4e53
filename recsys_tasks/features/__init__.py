"""Stage 2: the NVTabular workflow (``workflow``) and the per-id user and item feature tables it yields
(``tables``).
"""
