"""Segmenting one slide: its options, the patch grid (``tiling``), the block readers
(``reader``), the model's streams and runtime, and the run that joins them (``segment``)."""
