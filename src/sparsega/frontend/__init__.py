"""Pipeline steps 1-2, photos to pair predictions: image loading (:mod:`.images`), the scene graph (:mod:`.pairs`),
the network (:mod:`.model`), pair inference (:mod:`.inference`), descriptor matching (:mod:`.matching`), the
content-keyed on-disk cache (:mod:`.cache`) and its Ray scale-out (:mod:`.distributed`)."""
