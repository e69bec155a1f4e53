"""``python -m recsys_tasks bench``: our scoring and loading side by side with the notebook's method and
plain limits.

Split by role: ``inputs`` (synthetic scale runs, subsets), ``notebook`` (the notebook's per-user method and
the list comparison), ``children`` (the real ``score`` stage in a child process, its peak memory),
``kernels`` (ranking and exact retrieval vs their references and the matrix-product ceiling),
``approximate`` (FAISS retrieval: speed and list quality vs exact), ``report`` (the Markdown table) and
``runner`` (the command line, one run measuring everything side by side).
"""
