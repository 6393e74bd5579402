"""The ``wsi-seg`` command line: thin wrappers that parse, validate and call one function."""
