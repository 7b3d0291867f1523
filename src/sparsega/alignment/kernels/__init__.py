"""Compiled CPU kernels of the sparse optimiser (numba), one module per piece of an iteration: the match losses
(:mod:`.match`), the camera model and its reverse pass (:mod:`.camera`), the DUSt3R fallback and Adam
(:mod:`.fallback`), and their torch-facing layout and autograd wrappers (:mod:`.layout`).

Every kernel has a plain torch twin (:mod:`sparsega.alignment.losses` and
:meth:`~sparsega.alignment.optimizer.SparseAligner.cameras`; ``loss_backend="autograd"``, also the CUDA path) and
``tests/test_kernels.py`` compares them. Kernels compile on first use (about 15 s per machine) and are cached on
disk by numba.
"""
