"""Softmax (multinomial logistic regression) on CIFAR-10 raw pixels (CS231n assignment 1).

    python -m experiments.softmax --data-dir /path/to/cifar10-jpeg.tar.gz [--quick]

The same pipeline as ``experiments.linear_svm`` (see its docstring) with the softmax loss:
initial loss ~ ln 10 = 2.303, naive-vs-vectorised check and speed, learning-rate x
regularisation search on the validation split, the best retrained on the training split,
test accuracy reported. Writes results.json, templates.png, search.png and loss.png in --out.
Without a CIFAR-10 copy it runs on the embedded 8x8 digits, as ``experiments.linear_svm`` does.
"""
from __future__ import annotations

from experiments.linear_svm import run


def main(argv=None) -> dict:
    return run("softmax", "softmax", "Softmax classifier on CIFAR-10 raw pixels (CS231n A1).", argv)


if __name__ == "__main__":
    main()
