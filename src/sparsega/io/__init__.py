"""Files in and out: exports (:mod:`.export`), naver's MASt3R cache (:mod:`.mast3r_cache`), the preview image
(:mod:`.preview`) and the browser viewer (:mod:`.viewer`)."""
