"""Dataset formats: the zarr episode store (format of record), validation, HDF5/parquet/pickle converters, training readers.

Layout: docs/design.md §6 and docs/dataset-layout.md. Public API::

    from cdred_pipeline.datasets import EpisodeWriter, open_dataset, validate, load_episodes
"""

from .layout import LAYOUT_VERSION
from .reader import FRAME_STACK, Dataset, DatasetReadError, check_readable, load_episodes, open_dataset, stack_frames
from .sampler import EpisodeSampler, fill_buffer
from .validate import validate
from .writer import EpisodeWriter, RgbWriter, copy_dataset, write_array

__all__ = [
    "LAYOUT_VERSION", "FRAME_STACK", "Dataset", "EpisodeWriter", "RgbWriter", "copy_dataset", "write_array",
    "open_dataset", "load_episodes", "check_readable", "DatasetReadError", "stack_frames", "validate", "EpisodeSampler",
    "fill_buffer",
]
