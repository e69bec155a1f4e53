"""Real-data quality benchmark: MovieLens-100K through the whole pipeline, the published lists read back
from Redis and judged beside classic recommenders on one time-based split (``python -m recsys_tasks bench-quality``).
"""
