"""Datasets: .npz files and scikit-learn's bundled sets (no downloads, ever)."""

from kompaktor.data.dataset import Dataset, Split, dataset_digest, load_dataset

__all__ = ["Dataset", "Split", "dataset_digest", "load_dataset"]
