"""Compiled CPU kernels of the alignment (numba): one module per piece of an optimiser iteration, the match losses
(:mod:`.match`), the camera model and its reverse pass (:mod:`.camera`), the DUSt3R fallback and Adam
(:mod:`.fallback`), their torch-facing layout and autograd wrappers (:mod:`.layout`); and the canonical views'
fusion and focal fit (:mod:`.canonical`).

Every kernel has a plain torch twin (:mod:`sparsega.alignment.losses`,
:meth:`~sparsega.alignment.optimizer.SparseAligner.cameras` and :mod:`sparsega.alignment.canonical`;
``loss_backend="autograd"``, also the CUDA path) and ``tests/test_kernels.py`` / ``tests/test_canonical.py`` compare
them. Kernels compile on first use (about 20 s per machine) and are cached on disk by numba.
"""
