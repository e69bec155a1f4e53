"""The compute kernels scoring dispatches to: exact top-k on the CPU (``topk``), FAISS approximate retrieval
(``ann``) and the DLRM's per-pair step in numba (``dlrm_cpu``).
"""
