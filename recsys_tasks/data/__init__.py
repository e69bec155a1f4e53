"""Stage 1's inputs: the sources (planted, Ali-CCP ``merlin``, daily ``parquet`` partitions), the planted
generator and the partition layout.
"""
