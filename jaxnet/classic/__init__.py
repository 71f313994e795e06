"""Classic (pre-deep-learning) classifiers of the course's first assignment, jit-compiled.

- :mod:`jaxnet.classic.knn`: k-nearest neighbours (L1/L2), the course's three L2 distance
  implementations, chunked distances, majority vote, k by cross-validation.
"""

from jaxnet.classic.knn import (
    METRICS,
    CVResult,
    cross_validate_k,
    knn_predict,
    l1_distances,
    l2_distances_one_loop,
    l2_distances_two_loops,
    l2_distances_vectorized,
    majority_vote,
    nearest_neighbors,
    pairwise_distances,
    predict_from_distances,
)

__all__ = [
    "METRICS", "CVResult", "cross_validate_k", "knn_predict", "l1_distances",
    "l2_distances_one_loop", "l2_distances_two_loops", "l2_distances_vectorized",
    "majority_vote", "nearest_neighbors", "pairwise_distances", "predict_from_distances",
]

# Other modules (linear classifiers, image features) append their imports below and
# extend __all__ with `__all__ += [...]`.

# jaxnet.classic.features: HOG and HSV hue histograms (batched NHWC, jit), extraction, train-stat normalisation.
from jaxnet.classic.features import (
    DEFAULT_FEATURES,
    FeatureNormalizer,
    color_histogram_hsv,
    extract_features,
    feature_dataset,
    fit_feature_normalizer,
    hog_features,
    rgb_to_gray,
    rgb_to_hsv,
)

__all__ += [
    "DEFAULT_FEATURES", "FeatureNormalizer", "color_histogram_hsv", "extract_features", "feature_dataset",
    "fit_feature_normalizer", "hog_features", "rgb_to_gray", "rgb_to_hsv",
]

# jaxnet.classic.linear: the course's linear SVM / softmax (W: (D, C), bias trick), naive and
# vectorised losses with hand gradients, minibatch SGD (jitted lax.scan), class templates.
from jaxnet.classic.linear import (
    LOSSES,
    accuracy,
    add_bias_column,
    class_templates,
    flatten_images,
    init_weights,
    linear_features,
    plot_loss_curve,
    plot_templates,
    predict,
    softmax_loss_naive,
    softmax_loss_vectorized,
    svm_loss_naive,
    svm_loss_vectorized,
    train_linear,
)
# jaxnet.classic.search: random / coarse-to-fine hyperparameter search (log-uniform), table, scatter plot.
from jaxnet.classic.search import Trial, coarse_to_fine, plot_search, random_search, results_table, sample_params

__all__ += [
    "LOSSES", "accuracy", "add_bias_column", "class_templates", "flatten_images", "init_weights",
    "linear_features", "plot_loss_curve", "plot_templates", "predict", "softmax_loss_naive",
    "softmax_loss_vectorized", "svm_loss_naive", "svm_loss_vectorized", "train_linear",
    "Trial", "coarse_to_fine", "plot_search", "random_search", "results_table", "sample_params",
]
