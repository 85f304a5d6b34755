"""Dataset formats: the zarr episode store (format of record), validation, HDF5/parquet/pickle converters, training readers."""
