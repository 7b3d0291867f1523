"""Pipeline steps 3-7, pair predictions to a :class:`~sparsega.scene.Scene` (entry point :func:`.api.align`):
canonical views and anchors (:mod:`.canonical`), the kinematic tree (:mod:`.kinematic`), the two-stage optimiser
(:mod:`.optimizer`, compiled CPU kernels in :mod:`.kernels`), known cameras (:mod:`.known`) and disconnected
graphs (:mod:`.components`)."""
