"""The one container image every component runs in, tagged with the package version.

``components/Dockerfile`` builds it from this repository (``make compile`` does not build
or push it); bumping ``driftloop.__version__`` moves every component to the new tag.
"""

from __future__ import annotations

import functools

from kfp import dsl

from driftloop import __version__

IMAGE_REPOSITORY = "ghcr.io/driftloop/driftloop"
IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"

#: The decorator of every component (``kfp/components*.py``): a lightweight component in
#: the project image that pip-installs nothing at run time.
component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
