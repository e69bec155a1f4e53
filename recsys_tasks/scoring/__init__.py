"""Stage 5: recommendations for every user (``stage``: plan / shard / collect), what scoring reads
(``catalog``), retrieval of candidates (``candidates``), the split DLRM (``ranker``) and the CPU kernels.
"""
