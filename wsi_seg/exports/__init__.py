"""Taking results elsewhere: class regions as QuPath GeoJSON (``geojson``) and patches
with their labels as a training set (``patches``)."""
