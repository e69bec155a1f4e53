"""Operations around the pipeline: run retention, and the throwaway local Redis that ``make run`` and the
tests start.
"""
