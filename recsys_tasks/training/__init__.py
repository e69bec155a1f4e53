"""Stages 3 and 4: the streaming loader and optimizers both fits share, the Two-Tower retrieval fit and the
DLRM ranking fit.
"""
