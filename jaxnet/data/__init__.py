"""Data: embedded digits, CIFAR-10 loaders, splits, train-only preprocessing, jittable augmentation.

Images are NHWC everywhere; labels are int32. Every loader error, and every label or
pixel a `Dataset` refuses, is a `DataError` (a `ValueError`) with a one-line message.
"""

from jaxnet.data.augment import augment, random_crop, random_flip
from jaxnet.data.cifar import (
    cache_dir,
    load_cifar10,
    load_cifar10_python,
    load_image_folder,
    load_image_tarball,
)
from jaxnet.data.digits import load_digits
from jaxnet.data.errors import DataError, DataNotFoundError
from jaxnet.data.preprocess import (
    PCA,
    Normalizer,
    channel_stats,
    fit_normalizer,
    mean_image,
    normalize_dataset,
    pca_fit,
    pca_transform,
    to_float,
    whiten,
)
from jaxnet.data.splits import Dataset, kfold_indices, split_indices, subsample, train_val_test_split
from jaxnet.data.text import CharVocab, TextCorpus, batchify, bptt_chunks, load_text_corpus, split_of, stdlib_root
from jaxnet.data.captions import CaptionData, CaptionSplit, CaptionVocab, cifar_mosaics, digit_strings

__all__ = [
    "DataError", "DataNotFoundError",
    "Dataset", "load_digits", "load_cifar10", "load_cifar10_python", "load_image_folder",
    "load_image_tarball", "cache_dir",
    "train_val_test_split", "split_indices", "kfold_indices", "subsample",
    "to_float", "mean_image", "channel_stats", "Normalizer", "fit_normalizer", "normalize_dataset",
    "PCA", "pca_fit", "pca_transform", "whiten",
    "random_crop", "random_flip", "augment",
    "CharVocab", "TextCorpus", "load_text_corpus", "split_of", "stdlib_root", "batchify", "bptt_chunks",
]
