"""Fast slide decoding paths: raw JPEG tiles of tiled TIFFs, decoded with DCT scaling on the CPU or in batches on the model's device."""
