"""Where the tests find the real CIFAR-10 copy: ``$JAXNET_CIFAR10_DIR`` or
``<repo>/../shared/data/cifar10-jpeg.tar.gz``; tests that need it skip otherwise."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_MESSAGE = ("CIFAR-10 copy not found: set JAXNET_CIFAR10_DIR to cifar10-jpeg.tar.gz, an image-folder "
                "root or cifar-10-batches-py (or place the tarball at ../shared/data/)")


def find_cifar10():
    """The path of the copy, or None."""
    env = os.environ.get("JAXNET_CIFAR10_DIR")
    if env and Path(env).expanduser().exists():
        return Path(env).expanduser()
    shared = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    return shared if shared.is_file() else None


def cifar10_or_skip() -> str:
    """The path of the copy as a string; skips the calling test with a clear message when absent."""
    found = find_cifar10()
    if found is None:
        pytest.skip(SKIP_MESSAGE)
    return str(found)
