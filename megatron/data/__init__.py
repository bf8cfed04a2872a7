"""Data: Megatron mmap datasets, GPT sample indices, blending, packing, the default corpus.

``build_gpt_datasets(data_cfg, seq_length, seed, num_samples, is_builder_rank=, barrier=)``
is what the training loop calls; the synthetic stream lives in ``megatron.data.mock``.
"""

from megatron.data.blended_dataset import BlendedDataset
from megatron.data.builder import build_gpt_datasets, parse_data_path, parse_split
from megatron.data.gpt_dataset import GPTDataset
from megatron.data.indexed_dataset import IndexedDatasetError, IndexWriter, MMapIndexedDataset

__all__ = [
    "BlendedDataset",
    "GPTDataset",
    "IndexWriter",
    "IndexedDatasetError",
    "MMapIndexedDataset",
    "build_gpt_datasets",
    "parse_data_path",
    "parse_split",
]
