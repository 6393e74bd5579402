"""Reading slides: the pyramid and its µm/px (``slide``), where the tissue is (``tissue``),
what identifies a slide's pixels (``fingerprint``) and the fast decoders (``decode``)."""
