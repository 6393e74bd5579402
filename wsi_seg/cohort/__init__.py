"""Many slides: a cohort run on this machine (``run``) or on dask.distributed
(``distributed``), and its summary page (``report``)."""
